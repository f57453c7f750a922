//! Chat messages to a prompt with the model's own Jinja chat template (from the GGUF
//! metadata or tokenizer_config.json), rendered by minijinja with Python string methods.

use minijinja::{context, Environment, Error, ErrorKind};
use serde::{Deserialize, Serialize};

use crate::checkpoint::Checkpoint;

/// End-of-turn markers of common chat templates; chat generation stops on those present.
const END_OF_TURN: [&str; 4] = ["<|im_end|>", "<|eot_id|>", "<|end|>", "<end_of_turn>"];

/// The checkpoint's chat template (GGUF metadata or tokenizer_config.json) compiled with its
/// BOS/EOS strings; `None` when it ships none.
pub fn checkpoint_template(ckpt: &Checkpoint) -> Result<Option<ChatTemplate>, Error> {
    let tok = &ckpt.tokenizer;
    let name = |id: Option<u32>| {
        id.and_then(|i| tok.id_to_token(i))
            .unwrap_or_default()
            .to_owned()
    };
    ckpt.chat_template
        .as_deref()
        .or(tok.chat_template())
        .map(|src| ChatTemplate::new(src, &name(tok.bos_id()), &name(tok.eos_id())))
        .transpose()
}

/// End-of-sequence ids, sorted and unique: where a completion stops.
pub fn eos_ids(ckpt: &Checkpoint) -> Vec<u32> {
    let mut ids = ckpt.config.eos_token_ids.clone();
    ids.extend(ckpt.tokenizer.eos_id());
    ids.sort_unstable();
    ids.dedup();
    ids
}

/// End-of-sequence plus end-of-turn ids: where a chat answer stops.
pub fn chat_stop_ids(ckpt: &Checkpoint) -> Vec<u32> {
    let mut ids = eos_ids(ckpt);
    ids.extend(
        END_OF_TURN
            .iter()
            .filter_map(|t| ckpt.tokenizer.token_to_id(t)),
    );
    ids.sort_unstable();
    ids.dedup();
    ids
}

/// One chat message; `content` may be OpenAI's list of parts, of which text parts count.
#[derive(Debug, Clone, Deserialize, Serialize)]
pub struct ChatMessage {
    pub role: String,
    #[serde(deserialize_with = "content_text")]
    pub content: String,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum Content {
    Text(String),
    Parts(Vec<Part>),
    Null(()),
}

#[derive(Deserialize)]
struct Part {
    #[serde(rename = "type")]
    kind: String,
    #[serde(default)]
    text: Option<String>,
}

fn content_text<'de, D: serde::Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    Ok(match Content::deserialize(d)? {
        Content::Text(s) => s,
        Content::Null(()) => String::new(),
        Content::Parts(parts) => {
            let mut out = String::new();
            for p in parts {
                if p.kind != "text" {
                    return Err(serde::de::Error::custom(format!(
                        "content part type `{}` is not supported (text only)",
                        p.kind
                    )));
                }
                out += p.text.as_deref().unwrap_or("");
            }
            out
        }
    })
}

/// A compiled chat template.
pub struct ChatTemplate {
    env: Environment<'static>,
    bos: String,
    eos: String,
}

impl ChatTemplate {
    /// Compiles `source`; `bos`/`eos` are the strings templates refer to as `bos_token` and
    /// `eos_token`.
    pub fn new(source: &str, bos: &str, eos: &str) -> Result<Self, Error> {
        let mut env = Environment::new();
        env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
        env.add_function("raise_exception", |msg: String| -> Result<String, Error> {
            Err(Error::new(ErrorKind::InvalidOperation, msg))
        });
        env.add_template_owned("chat", source.to_owned())?;
        Ok(Self {
            env,
            bos: bos.into(),
            eos: eos.into(),
        })
    }

    /// The prompt text for `messages`, ending where the assistant's reply begins.
    pub fn render(&self, messages: &[ChatMessage]) -> Result<String, Error> {
        self.env.get_template("chat")?.render(context! {
            messages => messages,
            add_generation_prompt => true,
            bos_token => self.bos,
            eos_token => self.eos,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_chatml_and_python_methods() {
        let src = "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'].strip() }}\
                   <|im_end|>\n{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}";
        let t = ChatTemplate::new(src, "<s>", "</s>").unwrap();
        let msgs: Vec<ChatMessage> = serde_json::from_str(
            r#"[{"role":"system","content":" Be brief. "},
                {"role":"user","content":[{"type":"text","text":"Hi"}]}]"#,
        )
        .unwrap();
        assert_eq!(
            t.render(&msgs).unwrap(),
            "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n\
             <|im_start|>assistant\n"
        );
        let bad = ChatTemplate::new("{{ raise_exception('no system role') }}", "", "").unwrap();
        assert!(bad
            .render(&msgs)
            .unwrap_err()
            .to_string()
            .contains("no system role"));
    }
}
