//! Chat templates (the Jinja text shipped in GGUF metadata or
//! `tokenizer_config.json`), rendered with `minijinja` and its Python
//! compatibility layer, as `transformers` renders them.

use serde::Serialize;

use crate::error::{ModelError, Result};

mod python;
mod strftime;

#[derive(Debug, Clone, Serialize)]
pub struct Message {
    pub role: String,
    pub content: String,
}

impl Message {
    pub fn new(role: impl Into<String>, content: impl Into<String>) -> Message {
        Message {
            role: role.into(),
            content: content.into(),
        }
    }
}

/// How a chat is rendered (`transformers`' `apply_chat_template` flags, as
/// vLLM's chat endpoint passes them).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChatOptions {
    /// End with the assistant's turn opener (default).
    pub add_generation_prompt: bool,
    /// Leave the final message open, so the model continues it (an
    /// assistant prefill); cuts the render right after that message's
    /// content. Exclusive with `add_generation_prompt`.
    pub continue_final_message: bool,
}

impl Default for ChatOptions {
    fn default() -> Self {
        ChatOptions {
            add_generation_prompt: true,
            continue_final_message: false,
        }
    }
}

/// Cuts `rendered` right after the last occurrence of `final_content`, as
/// `transformers` does for `continue_final_message` (falling back to the
/// content with surrounding whitespace stripped, as it does). Errors: the
/// content does not appear in the render.
pub fn continue_final(rendered: &str, final_content: &str) -> Result<String> {
    for needle in [final_content, final_content.trim()] {
        if let Some(at) = rendered.rfind(needle) {
            return Ok(rendered[..at + needle.len()].to_string());
        }
    }
    Err(ModelError::ChatTemplate(
        "continue_final_message is set but the final message does not appear in the chat after applying the chat template".into(),
    ))
}

/// The date `strftime_now` renders: transformers calls
/// `datetime.now().strftime(format)`; weft renders a fixed, documented date,
/// Friday 2024-07-26 00:00:00, so prompts (and their tokens) are
/// reproducible. `scripts/chat_template_references.py` uses the same date.
pub const STRFTIME_NOW_DATE: &str = "2024-07-26 00:00:00";

/// Renders `template` for `messages`, ending with the assistant's turn opener
/// when `add_generation_prompt` is set, as `transformers`' `apply_chat_template`
/// renders it (`_compile_jinja_template` in
/// `transformers/utils/chat_template_utils.py`): `trim_blocks` and
/// `lstrip_blocks` on, loop controls (`{% break %}`, `{% continue %}`),
/// `{% generation %}` blocks rendering their body, its `tojson`
/// (`json.dumps` with `ensure_ascii`, `indent`, `separators`, `sort_keys`),
/// `raise_exception(message)`, and `strftime_now(format)` on
/// [`STRFTIME_NOW_DATE`]. The template sees `messages`,
/// `add_generation_prompt`, `bos_token`, `eos_token`, and `tools` and
/// `documents` as none (as transformers passes them when not given);
/// values print as Python prints them (`None`, `True`, `[1, 'a']`).
///
/// Errors ([`ModelError::ChatTemplate`]): the template does not parse, or
/// its rendering fails; a `raise_exception(message)` error contains the
/// template's message.
pub fn render(
    template: &str,
    messages: &[Message],
    add_generation_prompt: bool,
    bos_token: &str,
    eos_token: &str,
) -> Result<String> {
    let mut env = environment();
    let source = generation_blocks_as_scopes(template).into_owned();
    env.add_template_owned("chat", source)
        .map_err(|e| ModelError::ChatTemplate(format!("cannot parse: {e}")))?;
    let tmpl = env
        .get_template("chat")
        .map_err(|e| ModelError::ChatTemplate(e.to_string()))?;
    tmpl.render(minijinja::context! {
        messages => messages,
        add_generation_prompt => add_generation_prompt,
        bos_token => bos_token,
        eos_token => eos_token,
        tools => minijinja::Value::from_object(python::PyNone),
        documents => minijinja::Value::from_object(python::PyNone),
    })
    .map_err(|e| ModelError::ChatTemplate(format!("cannot render: {e}")))
}

/// The environment transformers' `_compile_jinja_template` builds, in
/// minijinja terms.
fn environment() -> minijinja::Environment<'static> {
    let mut env = minijinja::Environment::new();
    env.set_trim_blocks(true);
    env.set_lstrip_blocks(true);
    minijinja_contrib::add_to_environment(&mut env);
    env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
    env.set_formatter(|out, _state, value| {
        out.write_str(&python::str(value))
            .map_err(|e| minijinja::Error::new(minijinja::ErrorKind::WriteFailure, e.to_string()))
    });
    env.add_function(
        "raise_exception",
        |message: String| -> std::result::Result<String, minijinja::Error> {
            Err(minijinja::Error::new(
                minijinja::ErrorKind::InvalidOperation,
                message,
            ))
        },
    );
    env.add_function("strftime_now", |format: String| {
        strftime::strftime_fixed(&format)
    });
    env.add_filter("tojson", python::tojson_filter);
    // jinja2's Undefined has length 0; minijinja refuses its length.
    let length = |value: minijinja::Value| -> std::result::Result<usize, minijinja::Error> {
        if value.is_undefined() {
            Ok(0)
        } else {
            minijinja::filters::length(&value)
        }
    };
    env.add_filter("length", length);
    env.add_filter("count", length);
    env.add_filter("string", |value: minijinja::Value| python::str(&value));
    python::add_falsy_guarded_filters(&mut env);
    env.add_test("none", |value: minijinja::Value| python::is_none(&value));
    env.add_test("iterable", |value: minijinja::Value| {
        python::is_iterable(&value)
    });
    env
}

/// Rewrites transformers' `{% generation %}` ... `{% endgeneration %}` (its
/// AssistantTracker extension: a call block that renders its body) as
/// `{% with %}` ... `{% endwith %}`, a scoped block that renders its body,
/// keeping each tag's whitespace control (`{%-`, `-%}`, `+`) so trimming is
/// unchanged. Tags inside comments, `{% raw %}` blocks and string literals
/// are left alone.
fn generation_blocks_as_scopes(template: &str) -> std::borrow::Cow<'_, str> {
    if !template.contains("generation") {
        return std::borrow::Cow::Borrowed(template);
    }
    let mut out = String::with_capacity(template.len());
    let mut rest = template;
    let mut in_raw = false;
    while let Some(open) = rest.find('{') {
        let after = &rest[open..];
        let (close, is_block) = if after.starts_with("{#") {
            ("#}", false)
        } else if after.starts_with("{%") {
            ("%}", true)
        } else if after.starts_with("{{") {
            ("}}", false)
        } else {
            out.push_str(&rest[..open + 1]);
            rest = &rest[open + 1..];
            continue;
        };
        let Some(len) = tag_length(after, close) else {
            break; // unterminated: the parser reports it
        };
        let tag = &after[..len];
        out.push_str(&rest[..open]);
        let inner = tag[2..len - 2].trim_matches(|c: char| c == '-' || c == '+');
        let word = inner.trim();
        if is_block && in_raw {
            in_raw = word != "endraw";
            out.push_str(tag);
        } else if is_block && word == "raw" {
            in_raw = true;
            out.push_str(tag);
        } else if is_block && (word == "generation" || word == "endgeneration") {
            let replacement = if word == "generation" {
                "with"
            } else {
                "endwith"
            };
            let at = tag.find(word).expect("the word is in its tag");
            out.push_str(&tag[..at]);
            out.push_str(replacement);
            out.push_str(&tag[at + word.len()..]);
        } else {
            out.push_str(tag);
        }
        rest = &after[len..];
    }
    out.push_str(rest);
    std::borrow::Cow::Owned(out)
}

/// Length of the tag at the start of `text` up to and including `close`,
/// skipping string literals inside expressions and blocks; `None` when it
/// does not close.
fn tag_length(text: &str, close: &str) -> Option<usize> {
    if close == "#}" {
        return text[2..].find(close).map(|n| n + 4);
    }
    let bytes = text.as_bytes();
    let mut i = 2;
    let mut quote: Option<u8> = None;
    while i < bytes.len() {
        let b = bytes[i];
        match quote {
            Some(_) if b == b'\\' => i += 1,
            Some(q) if b == q => quote = None,
            Some(_) => {}
            None if b == b'"' || b == b'\'' => quote = Some(b),
            None if text[i..].starts_with(close) => return Some(i + close.len()),
            None => {}
        }
        i += 1;
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    const CHATML: &str = "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}";

    #[test]
    fn continue_final_message_leaves_the_last_turn_open() {
        let messages = [
            Message::new("user", "Hi"),
            Message::new("assistant", "Hello, I"),
        ];
        let closed = render(CHATML, &messages, false, "", "").unwrap();
        let open = continue_final(&closed, &messages[1].content).unwrap();
        assert_eq!(
            open,
            "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\nHello, I"
        );
        // A template that strips the content: the stripped form is found.
        assert_eq!(continue_final("a: x\n", "x \n").unwrap(), "a: x");
        assert!(continue_final("a: y", "x").is_err());
    }

    #[test]
    fn renders_chatml() {
        let out = render(CHATML, &[Message::new("user", "Hi")], true, "", "").unwrap();
        assert_eq!(
            out,
            "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"
        );
    }

    #[test]
    fn python_string_methods_and_exceptions() {
        let t = "{{ messages[0].content.strip() }}{% if messages|length > 1 %}{{ raise_exception('one only') }}{% endif %}";
        assert_eq!(
            render(t, &[Message::new("user", "  x ")], false, "", "").unwrap(),
            "x"
        );
        let err = render(
            t,
            &[Message::new("user", "a"), Message::new("user", "b")],
            false,
            "",
            "",
        )
        .unwrap_err();
        assert!(err.to_string().contains("one only"), "{err}");
    }

    #[test]
    fn broken_template_is_an_error() {
        assert!(render("{% for %}", &[], false, "", "").is_err());
    }

    fn one(template: &str) -> String {
        render(template, &[Message::new("user", "hi")], true, "<s>", "</s>")
            .unwrap_or_else(|e| format!("error: {e}"))
    }

    #[test]
    fn blocks_are_trimmed_as_transformers_trims_them() {
        // trim_blocks drops the newline after a block tag; lstrip_blocks the
        // indentation before one. Without them this renders "\n  x\n\n".
        assert_eq!(
            one("{% if true %}\n  {% if true %}\nx\n  {% endif %}\n{% endif %}\n"),
            "x\n"
        );
    }

    #[test]
    fn loop_controls_work() {
        assert_eq!(
            one("{% for i in range(5) %}{% if i == 1 %}{% continue %}{% endif %}{% if i == 3 %}{% break %}{% endif %}{{ i }}{% endfor %}"),
            "02"
        );
    }

    #[test]
    fn generation_blocks_render_their_body() {
        // Every whitespace-control spelling; the body's `set` stays inside
        // (jinja2 renders it in a call block, its own scope).
        let t = "a\n  {%- generation -%}\n  b{% set x = 1 %}\n  {%- endgeneration -%}\n c{{ x }}|{% generation %}d{% endgeneration %}|{%+ generation +%}e{%+ endgeneration %}";
        assert_eq!(one(t), "abc|d|e");
        // Text that only looks like the tags is left alone.
        assert_eq!(
            generation_blocks_as_scopes("{# {% generation %} #}{{ '{% generation %}' }}{% raw %}{% generation %}{% endraw %}{{ x.generation }}"),
            "{# {% generation %} #}{{ '{% generation %}' }}{% raw %}{% generation %}{% endraw %}{{ x.generation }}"
        );
        assert_eq!(
            generation_blocks_as_scopes("{%- generation\t-%}x{% endgeneration %}"),
            "{%- with\t-%}x{% endwith %}"
        );
        // An unterminated tag is left for the parser to report.
        assert!(render("{% generation %}x{% endgeneration", &[], false, "", "").is_err());
    }

    #[test]
    fn strftime_now_uses_its_format_on_the_fixed_date() {
        assert_eq!(
            one("{{ strftime_now('%Y-%m-%d') }}|{{ strftime_now('%d %b %Y') }}"),
            "2024-07-26|26 Jul 2024"
        );
        assert!(STRFTIME_NOW_DATE.starts_with("2024-07-26"));
    }

    #[test]
    fn tools_and_documents_are_python_none() {
        assert_eq!(
            one("{{ tools }}|{{ tools is none }}|{{ tools is defined }}|{{ tools is iterable }}|{{ tools|tojson }}|{{ documents is not none }}|{{ tools|selectattr('type', 'equalto', 'x')|list|length }}|{% if not tools %}falsy{% endif %}"),
            "None|True|True|False|null|False|0|falsy"
        );
        // Iterating None fails in Python, as in a template written for tools.
        assert!(one("{% for t in tools %}{{ t }}{% endfor %}").starts_with("error:"));
    }

    #[test]
    fn undefined_values_behave_as_jinja2_undefined() {
        assert_eq!(
            one("{{ nothing|length }}|{{ nothing }}|{% for x in nothing %}x{% endfor %}|{{ nothing is iterable }}"),
            "0|||True"
        );
    }

    #[test]
    fn values_print_as_python() {
        assert_eq!(
            one("{{ add_generation_prompt }}|{{ none }}|{{ [1, 'a', none] }}|{{ false|string }}|{{ 2.0 }}"),
            "True|None|[1, 'a', None]|False|2.0"
        );
    }
}
