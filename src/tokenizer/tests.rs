//! Tokenizer unit tests on small synthetic GGUF images (the real model is covered by
//! tests/test_tokenizer.py against HF `tokenizers`).

use super::*;
use crate::gguf::writer::{string_array, GgufWriter};
use crate::gguf::MetaValue;
use crate::gguf::ValueType;

fn toy_gguf(model: &str, pre: &str) -> GgufFile {
    let table = byte_level::byte_to_char_table();
    let mut tokens: Vec<String> = table.iter().map(|c| c.to_string()).collect();
    let merges = ["h e", "he l", "l o", "hel lo", "Ġ hello"];
    for m in merges {
        tokens.push(m.replace(' ', ""));
    }
    let mut types = vec![1i32; tokens.len()];
    for (t, ty) in [("<|im_start|>", 3), ("<|im_end|>", 3), ("<tool_call>", 4), ("<|endoftext|>", 3)] {
        tokens.push(t.to_string());
        types.push(ty);
    }
    tokens.push("[PAD]".into());
    types.push(5);
    let n = tokens.len() as u32;
    let bytes = GgufWriter::new()
        .kv("tokenizer.ggml.model", MetaValue::String(model.into()))
        .kv("tokenizer.ggml.pre", MetaValue::String(pre.into()))
        .kv("tokenizer.ggml.tokens", string_array(&tokens))
        .kv("tokenizer.ggml.merges", string_array(&merges))
        .kv("tokenizer.ggml.token_type", MetaValue::Array(ValueType::I32, types.into_iter().map(MetaValue::I32).collect()))
        .kv("tokenizer.ggml.eos_token_id", MetaValue::U32(n - 4))
        .kv("tokenizer.ggml.bos_token_id", MetaValue::U32(n - 2))
        .kv("tokenizer.ggml.add_bos_token", MetaValue::Bool(false))
        .kv(
            "tokenizer.chat_template",
            MetaValue::String(
                "{% for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content }}<|im_end|>\n{% endfor %}\
                 {% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
                    .into(),
            ),
        )
        .to_bytes();
    GgufFile::from_bytes(bytes).unwrap()
}

fn toy() -> Tokenizer {
    Tokenizer::from_gguf(&toy_gguf("gpt2", "qwen2")).unwrap()
}

#[test]
fn merges_apply_and_round_trip() {
    let t = toy();
    let hello = t.token_to_id("hello").unwrap();
    let ghello = t.token_to_id("Ġhello").unwrap();
    let ids = t.encode("hello hello", false, true).unwrap();
    assert_eq!(ids, vec![hello, ghello]);
    assert_eq!(t.decode(&ids, false).unwrap(), "hello hello");
    let text = "héllo\t\r\n  wörld 123 <|im_start|> 🤖";
    let ids = t.encode(text, true, true).unwrap();
    assert_eq!(t.decode(&ids, false).unwrap(), text);
}

#[test]
fn control_tokens_only_with_parse_special_user_defined_always() {
    let t = toy();
    let im_start = t.token_to_id("<|im_start|>").unwrap();
    let tool = t.token_to_id("<tool_call>").unwrap();
    let on = t.encode("<|im_start|>x<tool_call>", false, true).unwrap();
    assert_eq!(on[0], im_start);
    assert_eq!(*on.last().unwrap(), tool);
    let off = t.encode("<|im_start|>x<tool_call>", false, false).unwrap();
    assert!(!off.contains(&im_start));
    assert_eq!(*off.last().unwrap(), tool);
    assert_eq!(t.decode(&off, false).unwrap(), "<|im_start|>x<tool_call>");
    // skip_special_tokens drops CONTROL, keeps USER_DEFINED.
    assert_eq!(t.decode(&on, true).unwrap(), "x<tool_call>");
}

#[test]
fn each_token_type_decodes_as_llama_cpp_does() {
    let t = toy();
    let hello = t.token_to_id("hello").unwrap();
    let im_end = t.token_to_id("<|im_end|>").unwrap();
    let tool = t.token_to_id("<tool_call>").unwrap();
    let pad = t.token_to_id("[PAD]").unwrap();
    assert_eq!(t.token_type(pad).unwrap(), TokenType::Unused);
    let ids = [hello, pad, im_end, tool, pad];
    // UNUSED: nothing either way; CONTROL: its text only when special tokens are kept.
    assert_eq!(t.decode(&ids, false).unwrap(), "hello<|im_end|><tool_call>");
    assert_eq!(t.decode(&ids, true).unwrap(), "hello<tool_call>");
    for skip in [false, true] {
        let mut d = t.decoder(skip);
        let streamed: String = ids.iter().map(|&i| d.push(i).unwrap()).collect::<String>() + &d.flush();
        assert_eq!(streamed, t.decode(&ids, skip).unwrap());
    }
    assert_eq!(decoder::parse_byte_token("<0x0A>"), Some(b'\n'));
    assert_eq!(decoder::parse_byte_token("<0x0AB>"), None);
}

#[test]
fn nfc_normalizes_before_splitting() {
    let t = toy();
    assert_eq!(t.encode("cafe\u{301}", false, true).unwrap(), t.encode("caf\u{e9}", false, true).unwrap());
}

#[test]
fn unknown_pre_tokenizer_and_model_are_errors() {
    let e = Tokenizer::from_gguf(&toy_gguf("gpt2", "falcon")).unwrap_err();
    assert!(matches!(e, TokenizerError::UnsupportedPreTokenizer(ref p) if p == "falcon"), "{e}");
    let e = Tokenizer::from_gguf(&toy_gguf("llama", "qwen2")).unwrap_err();
    assert!(matches!(e, TokenizerError::UnsupportedModel(_)), "{e}");
    let missing = GgufFile::from_bytes(GgufWriter::new().to_bytes()).unwrap();
    assert!(matches!(Tokenizer::from_gguf(&missing), Err(TokenizerError::MissingKey(_))));
}

#[test]
fn invalid_ids_are_errors_naming_the_id() {
    let t = toy();
    let e = t.decode(&[1, 999_999], false).unwrap_err();
    assert!(e.to_string().contains("999999"), "{e}");
    assert!(t.id_to_token(999_999).is_err());
    assert!(t.decoder(false).push(999_999).is_err());
}

#[test]
fn incremental_decoder_never_splits_a_character() {
    let t = toy();
    let text = "a é 🤖 中";
    let ids = t.encode(text, false, true).unwrap();
    let mut dec = t.decoder(false);
    let mut streamed = String::new();
    for &id in &ids {
        let piece = dec.push(id).unwrap();
        assert!(!piece.contains('\u{FFFD}'));
        streamed.push_str(&piece);
    }
    streamed.push_str(&dec.flush());
    assert_eq!(streamed, text);
    // An unfinished character is held, then replaced at flush like decode() does.
    let euro = t.encode("€", false, true).unwrap();
    assert_eq!(euro.len(), 3);
    let mut dec = t.decoder(false);
    assert_eq!(dec.push(euro[0]).unwrap(), "");
    assert_eq!(dec.push(euro[1]).unwrap(), "");
    assert_eq!(dec.flush(), "\u{FFFD}");
    assert_eq!(t.decode(&euro[..2], false).unwrap(), "\u{FFFD}");
}

#[test]
fn eog_and_special_ids() {
    let t = toy();
    let im_end = t.token_to_id("<|im_end|>").unwrap();
    let eot = t.token_to_id("<|endoftext|>").unwrap();
    assert_eq!(t.eos_id(), Some(im_end));
    assert_eq!(t.eog_ids(), &[im_end, eot]);
    assert!(t.is_special(im_end));
    assert!(!t.is_special(t.token_to_id("<tool_call>").unwrap()));
}

#[test]
fn chat_template_renders() {
    let t = toy();
    let s = t
        .apply_chat_template_messages(&[ChatMessage::system("be brief"), ChatMessage::user("hi")], true)
        .unwrap();
    assert_eq!(s, "<|im_start|>system\nbe brief<|im_end|>\n<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n");
}

#[test]
fn encode_batch_matches_encode() {
    let t = toy();
    let texts = ["hello", "héllo wörld", "", "<|im_end|> x"];
    let batch = t.encode_batch(&texts, false, true).unwrap();
    for (text, ids) in texts.iter().zip(batch) {
        assert_eq!(ids, t.encode(text, false, true).unwrap());
    }
}
