//! corral-probe (work in progress).
