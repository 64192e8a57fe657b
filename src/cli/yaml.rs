//! YAML output of JSON answers. Written by hand: serde_yaml is no longer maintained, and
//! JSON values need only block mappings, block sequences and scalars. Strings are written
//! as JSON strings, which YAML reads as double-quoted scalars, so no value can be taken for
//! a number, a boolean or a document marker.

use serde_json::Value;

/// The value as a YAML document.
pub fn to_yaml(v: &Value) -> String {
    let mut out = String::new();
    node(v, 0, &mut out);
    if !out.ends_with('\n') {
        out.push('\n');
    }
    out
}

fn scalar(v: &Value) -> String {
    match v {
        Value::Null => "null".into(),
        Value::String(s) => Value::String(s.clone()).to_string(),
        other => other.to_string(),
    }
}

fn key(k: &str) -> String {
    Value::String(k.to_owned()).to_string()
}

fn node(v: &Value, indent: usize, out: &mut String) {
    let pad = " ".repeat(indent);
    match v {
        Value::Object(m) if m.is_empty() => out.push_str("{}\n"),
        Value::Array(a) if a.is_empty() => out.push_str("[]\n"),
        Value::Object(m) => {
            for (k, v) in m {
                out.push_str(&format!("{pad}{}:", key(k)));
                child(v, indent, out);
            }
        }
        Value::Array(a) => {
            for v in a {
                out.push_str(&format!("{pad}-"));
                child(v, indent, out);
            }
        }
        other => out.push_str(&format!("{pad}{}\n", scalar(other))),
    }
}

fn child(v: &Value, indent: usize, out: &mut String) {
    match v {
        Value::Object(m) if !m.is_empty() => {
            out.push('\n');
            node(v, indent + 2, out);
        }
        Value::Array(a) if !a.is_empty() => {
            out.push('\n');
            node(v, indent + 2, out);
        }
        Value::Object(_) => out.push_str(" {}\n"),
        Value::Array(_) => out.push_str(" []\n"),
        other => out.push_str(&format!(" {}\n", scalar(other))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn nested_values_become_block_yaml() {
        let v = json!({"name": "web", "drives": [{"id": "a", "size_mib": 64}], "idle": {}, "tags": [], "n": null, "yes": "true"});
        assert_eq!(
            to_yaml(&v),
            "\"drives\":\n  -\n    \"id\": \"a\"\n    \"size_mib\": 64\n\"idle\": {}\n\"n\": null\n\"name\": \"web\"\n\"tags\": []\n\"yes\": \"true\"\n"
        );
        assert_eq!(to_yaml(&json!([1, "x"])), "- 1\n- \"x\"\n");
    }
}
