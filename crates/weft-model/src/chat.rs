//! Chat templates (the Jinja text shipped in GGUF metadata or
//! `tokenizer_config.json`), rendered with `minijinja` and its Python
//! compatibility layer, as `transformers` renders them.

use serde::Serialize;

use crate::error::{ModelError, Result};

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

/// Renders `template` for `messages`, ending with the assistant's turn opener
/// when `add_generation_prompt` is set.
pub fn render(
    template: &str,
    messages: &[Message],
    add_generation_prompt: bool,
    bos_token: &str,
    eos_token: &str,
) -> Result<String> {
    let mut env = minijinja::Environment::new();
    minijinja_contrib::add_to_environment(&mut env);
    env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
    env.add_function(
        "raise_exception",
        |msg: String| -> std::result::Result<String, minijinja::Error> {
            Err(minijinja::Error::new(
                minijinja::ErrorKind::InvalidOperation,
                msg,
            ))
        },
    );
    env.add_function("strftime_now", |fmt: String| -> String {
        // Templates use this for a date line; a fixed, documented date keeps
        // prompts reproducible.
        let _ = fmt;
        "26 Jul 2024".to_string()
    });
    env.add_template("chat", template)
        .map_err(|e| ModelError::ChatTemplate(format!("cannot parse: {e}")))?;
    let tmpl = env
        .get_template("chat")
        .map_err(|e| ModelError::ChatTemplate(e.to_string()))?;
    tmpl.render(minijinja::context! {
        messages => messages,
        add_generation_prompt => add_generation_prompt,
        bos_token => bos_token,
        eos_token => eos_token,
    })
    .map_err(|e| ModelError::ChatTemplate(format!("cannot render: {e}")))
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
}
