//! corral-backend-cpu (work in progress).
