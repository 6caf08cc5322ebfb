//! The Modelfile parser: `corral create` and `/api/create` take Modelfile text from users.

use corral_registry::Error;
use corral_registry::modelfile::{Directive, parse};

/// Parses `data` as a Modelfile; every position it reports must lie in the text.
pub fn modelfile(data: &[u8]) {
    let text = crate::text(data);
    let lines = text.matches('\n').count() + 1;
    let in_text = |(line, column): (usize, usize)| line >= 1 && column >= 1 && line <= lines;
    match parse(&text) {
        Ok(m) => {
            assert!(
                m.commands.iter().any(|c| matches!(c.directive, Directive::From(_))),
                "a Modelfile without FROM parsed"
            );
            for c in &m.commands {
                assert!(in_text((c.line, c.column)), "command at {}:{}", c.line, c.column);
                assert!(in_text(c.value_pos), "value at {:?}", c.value_pos);
                assert!(c.value_pos >= (c.line, c.column), "value before its keyword");
                if let Directive::Parameter { value, .. } = &c.directive {
                    let _ = value.to_string();
                }
            }
        }
        Err(Error::Modelfile { line, column, message }) => {
            assert!(in_text((line, column)), "error at {line}:{column}: {message}");
        }
        Err(e) => panic!("parse returned an error that is not a Modelfile error: {e}"),
    }
}
