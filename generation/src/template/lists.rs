//! Lists that templates change in place, as Python's do: `ns.ids.append(x)` and
//! `ns.ids.pop(0)` on a list held by a `namespace()` (Kimi K2's templates queue their
//! tool-call ids that way). minijinja's values are immutable, so `namespace()` keeps the
//! lists it is given in a [`TemplateList`], whose methods change it under a lock; any
//! other list stays immutable and `append` on it is still an error.

use std::sync::{Arc, Mutex, MutexGuard};

use minijinja::value::{Enumerator, Object, ObjectRepr, Value, ValueKind};
use minijinja::{Error, ErrorKind, State};

/// The most elements one template list may hold (the fuel bounds the work; this bounds
/// the memory of a loop that appends large values).
const MAX_ITEMS: usize = 1 << 16;

/// A list a template may change in place.
#[derive(Debug, Default)]
pub(super) struct TemplateList(Mutex<Vec<Value>>);

impl TemplateList {
    fn items(&self) -> MutexGuard<'_, Vec<Value>> {
        // A panic cannot happen while the lock is held (no user code runs under it).
        self.0.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

fn invalid(message: String) -> Error {
    Error::new(ErrorKind::InvalidOperation, message)
}

/// Python's index rule: negative counts from the end; `None` when out of range.
fn resolve_index(index: i64, len: usize) -> Option<usize> {
    let i = if index < 0 { len as i64 + index } else { index };
    (0..len as i64).contains(&i).then_some(i as usize)
}

impl Object for TemplateList {
    fn repr(self: &Arc<Self>) -> ObjectRepr {
        ObjectRepr::Seq
    }

    fn get_value(self: &Arc<Self>, key: &Value) -> Option<Value> {
        let items = self.items();
        resolve_index(key.as_i64()?, items.len()).map(|i| items[i].clone())
    }

    fn enumerate(self: &Arc<Self>) -> Enumerator {
        Enumerator::Values(self.items().clone())
    }

    fn enumerator_len(self: &Arc<Self>) -> Option<usize> {
        Some(self.items().len())
    }

    fn call_method(
        self: &Arc<Self>,
        _state: &State<'_, '_>,
        method: &str,
        args: &[Value],
    ) -> Result<Value, Error> {
        // The items to add are read before the lock is taken: `l.extend(l)` reads `l`.
        let added: Option<Vec<Value>> = match (method, args) {
            ("extend", [xs]) => Some(xs.try_iter()?.collect()),
            _ => None,
        };
        let mut items = self.items();
        let grow = |items: &Vec<Value>, by: usize| {
            if items.len() + by > MAX_ITEMS {
                Err(invalid(format!("a template list may hold at most {MAX_ITEMS} items")))
            } else {
                Ok(())
            }
        };
        match (method, args) {
            ("append", [x]) => {
                grow(&items, 1)?;
                items.push(x.clone());
                Ok(Value::from(()))
            }
            ("extend", [_]) => {
                let new = added.unwrap_or_default();
                grow(&items, new.len())?;
                items.extend(new);
                Ok(Value::from(()))
            }
            ("insert", [at, x]) => {
                grow(&items, 1)?;
                let at = at
                    .as_i64()
                    .ok_or_else(|| invalid("insert: the index must be an integer".into()))?;
                let len = items.len() as i64;
                let at = if at < 0 { (len + at).max(0) } else { at.min(len) };
                items.insert(at as usize, x.clone());
                Ok(Value::from(()))
            }
            ("pop", []) => items.pop().ok_or_else(|| invalid("pop from an empty list".into())),
            ("pop", [at]) => {
                let at = at
                    .as_i64()
                    .ok_or_else(|| invalid("pop: the index must be an integer".into()))?;
                let i = resolve_index(at, items.len())
                    .ok_or_else(|| invalid(format!("pop index {at} out of range")))?;
                Ok(items.remove(i))
            }
            ("clear", []) => {
                items.clear();
                Ok(Value::from(()))
            }
            _ => {
                // Everything else (`index`, `count`, ...) as on an immutable list.
                drop(items);
                Err(Error::from(ErrorKind::UnknownMethod))
            }
        }
    }
}

/// `namespace(...)` whose list values templates may change in place.
pub(super) fn namespace(defaults: Option<Value>) -> Result<Value, Error> {
    let Some(defaults) = defaults else { return minijinja::functions::namespace(None) };
    if defaults.kind() != ValueKind::Map {
        return minijinja::functions::namespace(Some(defaults));
    }
    let mut pairs = Vec::new();
    for key in defaults.try_iter()? {
        let value = defaults.get_item(&key)?;
        let value = if value.kind() == ValueKind::Seq
            && value.downcast_object_ref::<TemplateList>().is_none()
        {
            let items: Vec<Value> = value.try_iter()?.collect();
            Value::from_object(TemplateList(Mutex::new(items)))
        } else {
            value
        };
        pairs.push((key, value));
    }
    minijinja::functions::namespace(Some(Value::from_iter(pairs)))
}
