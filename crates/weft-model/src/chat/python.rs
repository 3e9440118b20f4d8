//! What chat templates see of Python when `transformers` renders them with
//! jinja2: how values print (`str`, `repr`), its `tojson` filter
//! (`json.dumps`), and `strftime` on the fixed date of `strftime_now`.

use std::sync::Arc;

use minijinja::value::{Kwargs, Object, ObjectRepr, Rest, ValueKind};
use minijinja::{Error, ErrorKind, Value};

/// Python's `None` where it differs from minijinja's none: iterating it
/// (`{% for tool in tools %}`) is an error, and `is iterable` is false.
/// transformers passes `tools=None` and `documents=None` when a chat has
/// none, and templates written for tools fail on them; minijinja's none
/// iterates as empty, so these two are passed as this object. It is falsy,
/// `is none` (see [`is_none`]), prints `None` and dumps to `null`.
#[derive(Debug)]
pub struct PyNone;

impl Object for PyNone {
    fn repr(self: &Arc<Self>) -> ObjectRepr {
        ObjectRepr::Plain
    }

    fn is_true(self: &Arc<Self>) -> bool {
        false
    }

    fn render(self: &Arc<Self>, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("None")
    }
}

/// The `none` test: minijinja's none or [`PyNone`].
pub fn is_none(value: &Value) -> bool {
    value.is_none() || value.downcast_object_ref::<PyNone>().is_some()
}

/// The `iterable` test as jinja2 answers it (`iter(value)` succeeds): none
/// is not iterable; an undefined value is (it iterates as empty).
pub fn is_iterable(value: &Value) -> bool {
    !is_none(value) && value.try_iter().is_ok()
}

/// `str(value)` as jinja2 prints it: `None`, `True`, `1.0`, `['a', 1]`,
/// `{'k': 'v'}`; an undefined value prints nothing.
pub fn str(value: &Value) -> String {
    match value.kind() {
        ValueKind::Undefined => String::new(),
        ValueKind::String => value.as_str().unwrap_or_default().to_string(),
        _ => repr(value),
    }
}

/// jinja2's `select`, `reject`, `selectattr`, `rejectattr` and `map` start
/// with `if value:`, so a falsy input (none included) gives an empty
/// result where minijinja's would fail or iterate; these wrap minijinja's.
pub fn add_falsy_guarded_filters(env: &mut minijinja::Environment<'_>) {
    use minijinja::filters;
    use minijinja::State;
    use std::borrow::Cow;
    type Filtered = Result<Vec<Value>, Error>;
    env.add_filter(
        "select",
        |state: &State, value: Value, test: Option<String>, args: Rest<Value>| -> Filtered {
            if !value.is_true() {
                return Ok(Vec::new());
            }
            filters::select(state, value, test.map(Cow::Owned), args)
        },
    );
    env.add_filter(
        "reject",
        |state: &State, value: Value, test: Option<String>, args: Rest<Value>| -> Filtered {
            if !value.is_true() {
                return Ok(Vec::new());
            }
            filters::reject(state, value, test.map(Cow::Owned), args)
        },
    );
    env.add_filter(
        "selectattr",
        |state: &State,
         value: Value,
         attr: String,
         test: Option<String>,
         args: Rest<Value>|
         -> Filtered {
            if !value.is_true() {
                return Ok(Vec::new());
            }
            filters::selectattr(state, value, Cow::Owned(attr), test.map(Cow::Owned), args)
        },
    );
    env.add_filter(
        "rejectattr",
        |state: &State,
         value: Value,
         attr: String,
         test: Option<String>,
         args: Rest<Value>|
         -> Filtered {
            if !value.is_true() {
                return Ok(Vec::new());
            }
            filters::rejectattr(state, value, Cow::Owned(attr), test.map(Cow::Owned), args)
        },
    );
    env.add_filter(
        "map",
        |state: &State, value: Value, args: Rest<Value>| -> Filtered {
            if !value.is_true() {
                return Ok(Vec::new());
            }
            filters::map(state, value, args)
        },
    );
}

/// `repr(value)`: strings quoted and escaped as Python quotes them,
/// containers with their items' `repr`.
pub fn repr(value: &Value) -> String {
    match value.kind() {
        ValueKind::Undefined => "Undefined".into(),
        _ if is_none(value) => "None".into(),
        ValueKind::Bool => if value.is_true() { "True" } else { "False" }.into(),
        ValueKind::Number if value.is_integer() => value.to_string(),
        ValueKind::Number => f64::try_from(value.clone())
            .map(float_repr)
            .unwrap_or_else(|_| value.to_string()),
        ValueKind::String => string_repr(value.as_str().unwrap_or_default()),
        ValueKind::Seq | ValueKind::Iterable => match value.try_iter() {
            Ok(items) => format!(
                "[{}]",
                items.map(|v| repr(&v)).collect::<Vec<_>>().join(", ")
            ),
            Err(_) => value.to_string(),
        },
        ValueKind::Map => match value.try_iter() {
            Ok(keys) => {
                let items: Vec<String> = keys
                    .map(|k| {
                        let v = value.get_item(&k).unwrap_or_default();
                        format!("{}: {}", repr(&k), repr(&v))
                    })
                    .collect();
                format!("{{{}}}", items.join(", "))
            }
            Err(_) => value.to_string(),
        },
        _ => value.to_string(),
    }
}

/// Python's `repr(float)`: the shortest digits that read back to `x`, in
/// fixed notation from 1e-4 up to 1e16 (with a `.0` when whole), in
/// exponent notation (`1e-05`, `1.5e+16`) beyond.
pub fn float_repr(x: f64) -> String {
    if x.is_nan() {
        return "nan".into();
    }
    if x.is_infinite() {
        return if x > 0.0 { "inf" } else { "-inf" }.into();
    }
    // `{:e}` gives the shortest round-trip digits: "-1.5e-7".
    let sci = format!("{x:e}");
    let (mantissa, exponent) = sci.split_once('e').expect("`{:e}` has an exponent");
    let exponent: i32 = exponent.parse().expect("`{:e}` exponent is an integer");
    let (sign, mantissa) = match mantissa.strip_prefix('-') {
        Some(m) => ("-", m),
        None => ("", mantissa),
    };
    let digits: String = mantissa.chars().filter(|c| *c != '.').collect();
    if !(-5 < exponent && exponent < 16) {
        let (first, more) = digits.split_at(1);
        let dot = if more.is_empty() { "" } else { "." };
        let esign = if exponent < 0 { '-' } else { '+' };
        return format!("{sign}{first}{dot}{more}e{esign}{:02}", exponent.abs());
    }
    let point = exponent + 1; // digits before the decimal point
    if point <= 0 {
        format!("{sign}0.{}{digits}", "0".repeat((-point) as usize))
    } else if point as usize >= digits.len() {
        let zeros = "0".repeat(point as usize - digits.len());
        format!("{sign}{digits}{zeros}.0")
    } else {
        let (whole, fraction) = digits.split_at(point as usize);
        format!("{sign}{whole}.{fraction}")
    }
}

/// Python's `repr(str)`: single quotes unless the text has a single quote
/// and no double one; backslash, the quote, `\t`, `\n`, `\r` escaped;
/// other control and invisible characters as `\xNN`, `\uNNNN`.
fn string_repr(s: &str) -> String {
    let quote = if s.contains('\'') && !s.contains('"') {
        '"'
    } else {
        '\''
    };
    let mut out = String::with_capacity(s.len() + 2);
    out.push(quote);
    for c in s.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '\t' => out.push_str("\\t"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            c if c == quote => {
                out.push('\\');
                out.push(c);
            }
            c if !is_printable(c) => {
                let n = c as u32;
                if n < 0x100 {
                    out.push_str(&format!("\\x{n:02x}"));
                } else if n < 0x10000 {
                    out.push_str(&format!("\\u{n:04x}"));
                } else {
                    out.push_str(&format!("\\U{n:08x}"));
                }
            }
            c => out.push(c),
        }
    }
    out.push(quote);
    out
}

/// Python's `str.isprintable` for the characters text carries: not a
/// control (Cc), format (common Cf), line or paragraph separator, or a
/// space other than U+0020.
fn is_printable(c: char) -> bool {
    !(c.is_control()
        || matches!(c,
            '\u{a0}' | '\u{ad}' | '\u{1680}' | '\u{2000}'..='\u{200f}' | '\u{2028}'..='\u{202f}'
            | '\u{205f}'..='\u{2064}' | '\u{3000}' | '\u{feff}'))
}

/// transformers' `tojson` filter: `tojson(x, ensure_ascii=False,
/// indent=None, separators=None, sort_keys=False)` is `json.dumps(x, ...)`
/// with those arguments, taken by position or name. Errors: an unknown or
/// repeated argument, or a value JSON cannot hold (undefined, an object).
pub fn tojson_filter(value: Value, args: Rest<Value>, kwargs: Kwargs) -> Result<Value, Error> {
    const NAMES: [&str; 4] = ["ensure_ascii", "indent", "separators", "sort_keys"];
    if args.len() > NAMES.len() {
        return Err(Error::new(
            ErrorKind::TooManyArguments,
            format!("tojson() takes at most {} arguments", NAMES.len() + 1),
        ));
    }
    let mut given: [Option<Value>; 4] = Default::default();
    for (slot, arg) in given.iter_mut().zip(args.iter()) {
        *slot = Some(arg.clone());
    }
    for name in kwargs.args() {
        let Some(at) = NAMES.iter().position(|n| *n == name) else {
            return Err(Error::new(
                ErrorKind::InvalidOperation,
                format!("tojson() got an unexpected keyword argument '{name}'"),
            ));
        };
        if given[at].is_some() {
            return Err(Error::new(
                ErrorKind::InvalidOperation,
                format!("tojson() got multiple values for argument '{name}'"),
            ));
        }
        given[at] = Some(kwargs.get::<Value>(name)?);
    }
    let [ensure_ascii, indent, separators, sort_keys] = given;
    let indent = match indent {
        None => None,
        Some(v) if v.is_none() || v.is_undefined() => None,
        Some(v) => Some(match v.as_str() {
            Some(s) => s.to_string(),
            None if v.kind() == ValueKind::Bool => " ".repeat(v.is_true() as usize),
            None => " ".repeat(i64::try_from(v)?.max(0) as usize),
        }),
    };
    let (item_separator, key_separator) = match separators {
        Some(v) if !v.is_none() && !v.is_undefined() => {
            let pair: Vec<Value> = v.try_iter()?.collect();
            match pair.as_slice() {
                [a, b] => (a.to_string(), b.to_string()),
                _ => {
                    return Err(Error::new(
                        ErrorKind::InvalidOperation,
                        "tojson(): separators must be a pair of strings",
                    ))
                }
            }
        }
        _ if indent.is_some() => (",".into(), ": ".into()),
        _ => (", ".into(), ": ".into()),
    };
    let dumps = JsonDumps {
        ensure_ascii: ensure_ascii.is_some_and(|v| v.is_true()),
        indent,
        item_separator,
        key_separator,
        sort_keys: sort_keys.is_some_and(|v| v.is_true()),
    };
    let mut out = String::new();
    dumps.value(&value, 0, &mut out)?;
    Ok(Value::from(out))
}

/// `json.dumps`'s encoder settings.
struct JsonDumps {
    ensure_ascii: bool,
    indent: Option<String>,
    item_separator: String,
    key_separator: String,
    sort_keys: bool,
}

impl JsonDumps {
    fn value(&self, value: &Value, level: usize, out: &mut String) -> Result<(), Error> {
        match value.kind() {
            _ if is_none(value) => out.push_str("null"),
            ValueKind::Bool => out.push_str(if value.is_true() { "true" } else { "false" }),
            ValueKind::Number if value.is_integer() => out.push_str(&value.to_string()),
            ValueKind::Number => out.push_str(&json_float(f64::try_from(value.clone())?)),
            ValueKind::String => self.string(value.as_str().unwrap_or_default(), out),
            ValueKind::Seq | ValueKind::Iterable => {
                let items: Vec<Value> = value.try_iter()?.collect();
                self.container(('[', ']'), items.len(), level, out, |i, level, out| {
                    self.value(&items[i], level, out)
                })?;
            }
            ValueKind::Map => {
                let mut items: Vec<(String, Value)> = Vec::new();
                for key in value.try_iter()? {
                    let item = value.get_item(&key)?;
                    items.push((json_key(&key)?, item));
                }
                if self.sort_keys {
                    items.sort_by(|a, b| a.0.cmp(&b.0));
                }
                self.container(('{', '}'), items.len(), level, out, |i, level, out| {
                    self.string(&items[i].0, out);
                    out.push_str(&self.key_separator);
                    self.value(&items[i].1, level, out)
                })?;
            }
            _ => {
                let kind = if value.is_undefined() {
                    "Undefined".to_string()
                } else {
                    value.kind().to_string()
                };
                return Err(Error::new(
                    ErrorKind::InvalidOperation,
                    format!("Object of type {kind} is not JSON serializable"),
                ));
            }
        }
        Ok(())
    }

    /// `[...]` or `{...}` around `len` items written by `item`, laid out as
    /// `json.dumps` lays them out for `indent`.
    fn container(
        &self,
        (open, close): (char, char),
        len: usize,
        level: usize,
        out: &mut String,
        item: impl Fn(usize, usize, &mut String) -> Result<(), Error>,
    ) -> Result<(), Error> {
        out.push(open);
        if len == 0 {
            out.push(close);
            return Ok(());
        }
        let newline = |out: &mut String, level: usize| {
            if let Some(indent) = &self.indent {
                out.push('\n');
                out.push_str(&indent.repeat(level));
            }
        };
        newline(out, level + 1);
        for i in 0..len {
            if i > 0 {
                out.push_str(&self.item_separator);
                newline(out, level + 1);
            }
            item(i, level + 1, out)?;
        }
        newline(out, level);
        out.push(close);
        Ok(())
    }

    /// A JSON string as `json.dumps` escapes it: `"`, `\`, `\b\f\n\r\t`,
    /// other controls as `\u00XX`; with `ensure_ascii`, everything outside
    /// printable ASCII as `\uXXXX` (surrogate pairs above U+FFFF).
    fn string(&self, s: &str, out: &mut String) {
        out.push('"');
        for c in s.chars() {
            match c {
                '"' => out.push_str("\\\""),
                '\\' => out.push_str("\\\\"),
                '\n' => out.push_str("\\n"),
                '\r' => out.push_str("\\r"),
                '\t' => out.push_str("\\t"),
                '\u{8}' => out.push_str("\\b"),
                '\u{c}' => out.push_str("\\f"),
                c if (c as u32) < 0x20 || (self.ensure_ascii && !(' '..='~').contains(&c)) => {
                    let mut units = [0u16; 2];
                    for unit in c.encode_utf16(&mut units) {
                        out.push_str(&format!("\\u{unit:04x}"));
                    }
                }
                c => out.push(c),
            }
        }
        out.push('"');
    }
}

/// `json.dumps` of a float: `NaN`, `Infinity`, or Python's `repr`.
fn json_float(x: f64) -> String {
    if x.is_nan() {
        "NaN".into()
    } else if x.is_infinite() {
        if x > 0.0 { "Infinity" } else { "-Infinity" }.into()
    } else {
        float_repr(x)
    }
}

/// A dict key as `json.dumps` writes it: strings as they are, numbers,
/// booleans and None spelled as JSON. Errors: any other key.
fn json_key(key: &Value) -> Result<String, Error> {
    Ok(match key.kind() {
        ValueKind::String => key.as_str().unwrap_or_default().to_string(),
        ValueKind::Number if key.is_integer() => key.to_string(),
        ValueKind::Number => json_float(f64::try_from(key.clone())?),
        ValueKind::Bool => if key.is_true() { "true" } else { "false" }.into(),
        ValueKind::None => "null".into(),
        kind => {
            return Err(Error::new(
                ErrorKind::InvalidOperation,
                format!("keys must be str, int, float, bool or None, not {kind}"),
            ))
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn floats_print_as_python_repr() {
        for (x, python) in [
            (1.0, "1.0"),
            (-0.0, "-0.0"),
            (0.1, "0.1"),
            (1.5e-7, "1.5e-07"),
            (0.0001, "0.0001"),
            (0.00001, "1e-05"),
            (1e15, "1000000000000000.0"),
            (1e16, "1e+16"),
            (123456.789, "123456.789"),
            (1.7976931348623157e308, "1.7976931348623157e+308"),
        ] {
            assert_eq!(float_repr(x), python, "{x}");
        }
    }

    fn render(template: &str, value: Value) -> String {
        let mut env = minijinja::Environment::new();
        env.add_filter("tojson", tojson_filter);
        env.set_formatter(|out, _, v| {
            out.write_str(&str(v))
                .map_err(|e| Error::new(ErrorKind::WriteFailure, e.to_string()))
        });
        env.render_str(
            template,
            minijinja::context! { x => value.clone(), s => value },
        )
        .unwrap_or_else(|e| format!("error: {e}"))
    }

    #[test]
    fn tojson_is_json_dumps() {
        // A dict literal keeps insertion order (b, a, c), as Python's does.
        let x = "{% set x = {'b': [1, 2.5, true, none, s], 'a': {}, 'c': []} %}";
        let s = Value::from("<&>'\"é😀\n\u{7f}");
        // Python: json.dumps(x, ...) with the same arguments.
        assert_eq!(
            render(&[x, "{{ x|tojson }}"].concat(), s.clone()),
            "{\"b\": [1, 2.5, true, null, \"<&>'\\\"é😀\\n\u{7f}\"], \"a\": {}, \"c\": []}"
        );
        assert_eq!(
            render(
                &[x, "{{ x|tojson(ensure_ascii=True, sort_keys=True) }}"].concat(),
                s.clone()
            ),
            r#"{"a": {}, "b": [1, 2.5, true, null, "<&>'\"\u00e9\ud83d\ude00\n\u007f"], "c": []}"#
        );
        assert_eq!(
            render(&[x, "{{ x|tojson(indent=2) }}"].concat(), s.clone()),
            "{\n  \"b\": [\n    1,\n    2.5,\n    true,\n    null,\n    \"<&>'\\\"é😀\\n\u{7f}\"\n  ],\n  \"a\": {},\n  \"c\": []\n}"
        );
        assert_eq!(
            render(
                &[x, "{{ x.b[:2]|tojson(separators=(',', ':')) }}"].concat(),
                s.clone()
            ),
            "[1,2.5]"
        );
        // Positional arguments follow transformers' signature: ensure_ascii first.
        assert_eq!(render("{{ 'é'|tojson(true) }}", s.clone()), r#""\u00e9""#);
        assert!(render("{{ y|tojson }}", s.clone()).contains("Undefined is not JSON serializable"));
        assert!(render("{{ s|tojson(bad=1) }}", s).contains("unexpected keyword argument 'bad'"));
    }

    #[test]
    fn values_print_as_python_prints_them() {
        let x = "{% set x = {'k': [none, true, false, 1.0, s, 'a\"b\\'c']} %}";
        assert_eq!(
            render(
                &[
                    x,
                    "{{ x }}|{{ x.k[0] }}|{{ x.k[1] }}|{{ x.k[3] }}|{{ x.nothing }}"
                ]
                .concat(),
                Value::from("it's")
            ),
            r#"{'k': [None, True, False, 1.0, "it's", 'a"b\'c']}|None|True|1.0|"#
        );
    }
}
