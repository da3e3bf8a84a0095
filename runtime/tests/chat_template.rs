//! Chat templates rendered against the strings transformers produces.
//!
//! Every expected string below was produced by Python's jinja2 3.1.6 configured
//! exactly as transformers' `chat_template_utils` does
//! (`ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True,
//! extensions=[loopcontrols])`, `tojson` = `json.dumps(x, ensure_ascii=False, ...)`,
//! `raise_exception`), rendering with `messages=..., tools=None, documents=None,
//! add_generation_prompt=..., bos_token=..., eos_token=...`, on the template text
//! read from the GGUF with the `gguf` Python package (`tokenizer.chat_template`).

use std::time::{Duration, Instant};

use smq_format::TokenizerSpec;
use smq_runtime::chat::{ChatError, ChatMessage, ChatTemplate};
use smq_runtime::tokenizer::Tokenizer;

const SMOLLM2: &str = "SmolLM2-135M-Instruct.Q4_1.gguf";
const GEMMA3: &str = "gemma-3-270m-q4_k_m.gguf";

fn spec_of(file: &str) -> Option<TokenizerSpec> {
    let path = smq_converter::test_models::find(file)?;
    let model = smq_converter::direct::open_gguf_direct(&path).expect("open gguf");
    Some(model.manifest.tokenizer.expect("tokenizer in gguf"))
}

fn token_text(spec: &TokenizerSpec, id: Option<u32>) -> String {
    let bytes = spec
        .token(id.expect("special id") as usize)
        .expect("id in vocab");
    String::from_utf8(bytes.to_vec()).expect("utf-8 token")
}

fn token_id(spec: &TokenizerSpec, text: &str) -> u32 {
    (0..spec.n_tokens())
        .find(|&i| spec.token(i) == Some(text.as_bytes()))
        .expect("token in vocab") as u32
}

/// The model's own template with its own bos/eos texts.
fn template_of(spec: &TokenizerSpec) -> ChatTemplate {
    let source = spec
        .chat_template
        .as_deref()
        .expect("chat template in gguf");
    ChatTemplate::new(
        source,
        &token_text(spec, spec.bos_id),
        &token_text(spec, spec.eos_id),
    )
    .expect("template compiles")
}

fn msgs(turns: &[(&str, &str)]) -> Vec<ChatMessage> {
    turns
        .iter()
        .map(|(r, c)| ChatMessage::new(*r, *c))
        .collect()
}

const SMOLLM2_DEFAULT_SYSTEM: &str =
    "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n";

#[test]
fn smollm2_renders_like_transformers() {
    let Some(spec) = spec_of(SMOLLM2) else { return };
    let tpl = template_of(&spec);

    let user_only = tpl
        .render(&msgs(&[("user", "What is the capital of France?")]), true)
        .unwrap();
    assert_eq!(
        user_only,
        "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n<|im_start|>user\nWhat is the capital of France?<|im_end|>\n<|im_start|>assistant\n"
    );

    let with_system = tpl
        .render(
            &msgs(&[
                ("system", "You are a concise geography tutor."),
                ("user", "What is the capital of France?"),
            ]),
            true,
        )
        .unwrap();
    assert_eq!(
        with_system,
        "<|im_start|>system\nYou are a concise geography tutor.<|im_end|>\n<|im_start|>user\nWhat is the capital of France?<|im_end|>\n<|im_start|>assistant\n"
    );

    // Without the generation prompt the assistant header is absent.
    let closed = tpl
        .render(&msgs(&[("user", "What is the capital of France?")]), false)
        .unwrap();
    assert_eq!(
        closed,
        user_only.strip_suffix("<|im_start|>assistant\n").unwrap()
    );
}

#[test]
fn smollm2_chat_prompt_tokenizes_like_the_reference() {
    let Some(spec) = spec_of(SMOLLM2) else { return };
    let tokenizer = Tokenizer::from_spec(&spec).unwrap();
    // The chat-formatted prompt of the llama.cpp reference (its `logits` entry
    // whose text contains <|im_start|>), found by content, not position.
    let reference: serde_json::Value = serde_json::from_str(include_str!(
        "../../tests/fixtures/reference/smollm2-135m-instruct-q4_1.json"
    ))
    .unwrap();
    let entry = reference["logits"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["prompt"].as_str().unwrap().contains("<|im_start|>"))
        .expect("a chat prompt in the reference");
    let ref_text = entry["prompt"].as_str().unwrap();
    let ref_ids: Vec<u32> = entry["prompt_ids"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_u64().unwrap() as u32)
        .collect();
    assert_eq!(
        ref_text,
        "<|im_start|>user\nWhat is 2+2?<|im_end|>\n<|im_start|>assistant\n"
    );

    // The model's template puts its default system turn before the same turns.
    let rendered = template_of(&spec)
        .render(&msgs(&[("user", "What is 2+2?")]), true)
        .unwrap();
    assert_eq!(rendered, format!("{SMOLLM2_DEFAULT_SYSTEM}{ref_text}"));
    let ids = tokenizer.encode(&rendered, true, true);
    let system_ids = tokenizer.encode(SMOLLM2_DEFAULT_SYSTEM, true, true);
    assert_eq!(ids[..system_ids.len()], system_ids[..]);
    assert_eq!(ids[system_ids.len()..], ref_ids[..]);

    // Plain ChatML (the layout the reference prompt was written in, and what
    // llama.cpp falls back to for a model without a template) reproduces the
    // reference text and ids exactly.
    let chatml = ChatTemplate::new(
        "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}",
        "<|im_start|>",
        "<|im_end|>",
    )
    .unwrap();
    let rendered = chatml
        .render(&msgs(&[("user", "What is 2+2?")]), true)
        .unwrap();
    assert_eq!(rendered, ref_text);
    assert_eq!(tokenizer.encode(&rendered, true, true), ref_ids);
}

/// Gemma 3's template as published with google/gemma-3-270m-it
/// (`chat_template` in its tokenizer_config.json). The GGUF in the model cache
/// carries no `tokenizer.chat_template`, so the test supplies the text.
const GEMMA3_TEMPLATE: &str = r#"{{ bos_token }}
{%- if messages[0]['role'] == 'system' -%}
    {%- if messages[0]['content'] is string -%}
        {%- set first_user_prefix = messages[0]['content'] + '\n\n' -%}
    {%- else -%}
        {%- set first_user_prefix = messages[0]['content'][0]['text'] + '\n\n' -%}
    {%- endif -%}
    {%- set loop_messages = messages[1:] -%}
{%- else -%}
    {%- set first_user_prefix = "" -%}
    {%- set loop_messages = messages -%}
{%- endif -%}
{%- for message in loop_messages -%}
    {%- if (message['role'] == 'user') != (loop.index0 % 2 == 0) -%}
        {{ raise_exception("Conversation roles must alternate user/assistant/user/assistant/...") }}
    {%- endif -%}
    {%- if (message['role'] == 'assistant') -%}
        {%- set role = "model" -%}
    {%- else -%}
        {%- set role = message['role'] -%}
    {%- endif -%}
    {{ '<start_of_turn>' + role + '\n' + (first_user_prefix if loop.first else "") }}
    {%- if message['content'] is string -%}
        {{ message['content'] | trim }}
    {%- elif message['content'] is iterable -%}
        {%- for item in message['content'] -%}
            {%- if item['type'] == 'image' -%}
                {{ '<start_of_image>' }}
            {%- elif item['type'] == 'text' -%}
                {{ item['text'] | trim }}
            {%- endif -%}
        {%- endfor -%}
    {%- else -%}
        {{ raise_exception("Invalid content type") }}
    {%- endif -%}
    {{ '<end_of_turn>\n' }}
{%- endfor -%}
{%- if add_generation_prompt -%}
    {{'<start_of_turn>model\n'}}
{%- endif -%}
"#;

#[test]
fn gemma3_renders_like_transformers() {
    let Some(spec) = spec_of(GEMMA3) else { return };
    assert_eq!(spec.chat_template, None, "this GGUF ships no template");
    let (bos, eos) = (
        token_text(&spec, spec.bos_id),
        token_text(&spec, spec.eos_id),
    );
    assert_eq!((bos.as_str(), eos.as_str()), ("<bos>", "<eos>"));
    let tpl = ChatTemplate::new(GEMMA3_TEMPLATE, &bos, &eos).unwrap();

    let user = tpl
        .render(&msgs(&[("user", "What is the capital of France?")]), true)
        .unwrap();
    assert_eq!(
        user,
        "<bos><start_of_turn>user\nWhat is the capital of France?<end_of_turn>\n<start_of_turn>model\n"
    );

    // The system message is folded into the first user turn.
    let system = tpl
        .render(
            &msgs(&[
                ("system", "Answer in one word."),
                ("user", "What is the capital of France?"),
            ]),
            true,
        )
        .unwrap();
    assert_eq!(
        system,
        "<bos><start_of_turn>user\nAnswer in one word.\n\nWhat is the capital of France?<end_of_turn>\n<start_of_turn>model\n"
    );

    // Two exchanges; content is trimmed and the assistant role becomes "model".
    let two = tpl
        .render(
            &msgs(&[
                ("system", "Answer in one word."),
                ("user", "  What is the capital of France?\n"),
                ("assistant", "Paris."),
                ("user", "And of Italy?"),
            ]),
            true,
        )
        .unwrap();
    assert_eq!(
        two,
        "<bos><start_of_turn>user\nAnswer in one word.\n\nWhat is the capital of France?<end_of_turn>\n<start_of_turn>model\nParis.<end_of_turn>\n<start_of_turn>user\nAnd of Italy?<end_of_turn>\n<start_of_turn>model\n"
    );

    let closed = tpl
        .render(&msgs(&[("user", "Hi"), ("assistant", "Hello!")]), false)
        .unwrap();
    assert_eq!(
        closed,
        "<bos><start_of_turn>user\nHi<end_of_turn>\n<start_of_turn>model\nHello!<end_of_turn>\n"
    );

    // The template rejects non-alternating roles through raise_exception.
    match tpl.render(&msgs(&[("user", "a"), ("user", "b")]), true) {
        Err(ChatError::Raised { message, .. }) => assert_eq!(
            message,
            "Conversation roles must alternate user/assistant/user/assistant/..."
        ),
        other => panic!("expected a raised exception, got {other:?}"),
    }

    // Turn markers are single special tokens and the text starts with BOS, so
    // the prompt is tokenized without adding another BOS.
    let tokenizer = Tokenizer::from_spec(&spec).unwrap();
    let ids = tokenizer.encode(&system, false, true);
    let (sot, eot) = (
        token_id(&spec, "<start_of_turn>"),
        token_id(&spec, "<end_of_turn>"),
    );
    assert_eq!(ids[0], spec.bos_id.unwrap());
    assert_eq!(ids[1], sot);
    assert_eq!(ids.iter().filter(|&&t| t == sot).count(), 2);
    assert_eq!(ids.iter().filter(|&&t| t == eot).count(), 1);
}

/// Whitespace control, loop controls, namespace, Python string and dict
/// methods, Python-style printing of None/True and `tojson` like `json.dumps`.
const FEATURES_TEMPLATE: &str = r#"{%- set ns = namespace(found=false, count=0) %}
{% for message in messages %}
    {% if message['role'] == 'system' %}
        {% set ns.found = true %}
        {% continue %}
    {% endif %}
    {% set ns.count = ns.count + 1 %}
[{{ loop.index }}] {{ message.role.upper() }}: {{ message['content'].strip() }}
    {% if message.content.startswith('  ') and message.content.rstrip().endswith('?') %}
(question: {{ message.content.lstrip().split(' ')[0].lower() }} / {{ message.content.replace('?', '!').strip().title() }})
    {% endif %}
    {% if ns.count >= 3 %}{% break %}{% endif %}
{% endfor %}
system seen: {{ ns.found }}; counted: {{ ns.count }}; none: {{ none }}
{% set tool = {"name": "get_weather", "description": "Météo — \"quoted\"\tand\\slash", "parameters": {"type": "object", "properties": {"city": {"type": "string"}, "days": {"type": "integer", "default": 3}, "ratio": {"type": "number", "default": 0.5}, "big": 1e16, "small": 1.5e-07, "on": true, "nil": none, "list": [1, 2.0, "三"]}}} %}
{{ tool | tojson }}
{{ tool | tojson(indent=2) }}
{{ tool.parameters.properties.list | tojson(ensure_ascii=true) }} {{ {"b": 1, "a": [], "c": {}} | tojson(sort_keys=true) }} {{ {"x": [1, 2]} | tojson(separators=[",", ":"]) }}
{% for k, v in tool.parameters.items() %}{{ k }}={{ v is string }};{% endfor %} {{ tool.get('missing', 'dflt') }} {{ (messages | map(attribute='role') | list)[::-1] | join(',') }}
{% if add_generation_prompt %}
<assistant>
{% endif %}
"#;

#[test]
fn python_semantics_match_jinja2() {
    let tpl = ChatTemplate::new(FEATURES_TEMPLATE, "<s>", "</s>").unwrap();
    let out = tpl
        .render(
            &msgs(&[
                ("system", "sys"),
                ("user", "  What is up?  "),
                ("assistant", "Ça va — “bien”."),
                ("user", "  Why not?"),
                ("user", "x"),
                ("user", "never shown"),
            ]),
            true,
        )
        .unwrap();
    assert_eq!(out, FEAT_EXPECTED);
}

/// jinja2's output for [`FEATURES_TEMPLATE`] on the messages above.
const FEAT_EXPECTED: &str = "[2] USER: What is up?\n(question: what / What Is Up!)\n[3] ASSISTANT: Ça va — “bien”.\n[4] USER: Why not?\n(question: why / Why Not!)\nsystem seen: True; counted: 3; none: None\n{\"name\": \"get_weather\", \"description\": \"Météo — \\\"quoted\\\"\\tand\\\\slash\", \"parameters\": {\"type\": \"object\", \"properties\": {\"city\": {\"type\": \"string\"}, \"days\": {\"type\": \"integer\", \"default\": 3}, \"ratio\": {\"type\": \"number\", \"default\": 0.5}, \"big\": 1e+16, \"small\": 1.5e-07, \"on\": true, \"nil\": null, \"list\": [1, 2.0, \"三\"]}}}\n{\n  \"name\": \"get_weather\",\n  \"description\": \"Météo — \\\"quoted\\\"\\tand\\\\slash\",\n  \"parameters\": {\n    \"type\": \"object\",\n    \"properties\": {\n      \"city\": {\n        \"type\": \"string\"\n      },\n      \"days\": {\n        \"type\": \"integer\",\n        \"default\": 3\n      },\n      \"ratio\": {\n        \"type\": \"number\",\n        \"default\": 0.5\n      },\n      \"big\": 1e+16,\n      \"small\": 1.5e-07,\n      \"on\": true,\n      \"nil\": null,\n      \"list\": [\n        1,\n        2.0,\n        \"三\"\n      ]\n    }\n  }\n}\n[1, 2.0, \"\\u4e09\"] {\"a\": [], \"b\": 1, \"c\": {}} {\"x\":[1,2]}\ntype=True;properties=False; dflt user,user,user,assistant,user,system\n<assistant>\n";

#[test]
fn raise_exception_is_an_error_with_its_message() {
    let tpl = ChatTemplate::new(
        "{% for m in messages %}\n{% if m.role not in ['user', 'assistant'] %}\n{{ raise_exception('Unsupported role: ' + m.role) }}\n{% endif %}\n{{ m.content }}\n{% endfor %}",
        "",
        "",
    )
    .unwrap();
    assert_eq!(tpl.render(&msgs(&[("user", "hi")]), false).unwrap(), "hi\n");
    let err = tpl
        .render(&msgs(&[("user", "hi"), ("tool", "x")]), false)
        .unwrap_err();
    match &err {
        ChatError::Raised { message, line } => {
            assert_eq!(message, "Unsupported role: tool");
            assert_eq!(*line, Some(3));
        }
        other => panic!("expected a raised exception, got {other:?}"),
    }
    let text = err.to_string();
    assert_eq!(
        text,
        "chat template rejected the conversation: Unsupported role: tool (line 3)"
    );
}

#[test]
fn runaway_template_runs_out_of_fuel_quickly() {
    let tpl = ChatTemplate::new(
        "{% for i in range(100000) %}{% for j in range(100000) %}{% if i == j %}x{% endif %}{% endfor %}{% endfor %}",
        "",
        "",
    )
    .unwrap();
    let start = Instant::now();
    let err = tpl.render(&[], false).unwrap_err();
    assert!(matches!(err, ChatError::OutOfFuel { .. }), "{err:?}");
    assert!(
        start.elapsed() < Duration::from_secs(10),
        "took {:?}",
        start.elapsed()
    );
    assert!(!err.to_string().contains('\n'));
}

#[test]
fn unbounded_recursion_is_an_error() {
    let tpl = ChatTemplate::new(
        "{% macro f(n) %}{{ f(n + 1) }}{% endmacro %}{{ f(0) }}",
        "",
        "",
    )
    .unwrap();
    let err = tpl.render(&[], false).unwrap_err();
    assert!(matches!(err, ChatError::Render { .. }), "{err:?}");
}

#[test]
fn huge_output_is_refused() {
    let tpl = ChatTemplate::new(
        "{% for i in range(1000) %}{{ 'x' * 100000 }}{% endfor %}",
        "",
        "",
    )
    .unwrap();
    let err = tpl.render(&[], false).unwrap_err();
    assert!(matches!(err, ChatError::OutputTooLarge { .. }), "{err:?}");
}

#[test]
fn syntax_errors_report_their_line() {
    let err = ChatTemplate::new(
        "{% for m in messages %}\n{{ m.content }\n{% endfor %}",
        "",
        "",
    )
    .unwrap_err();
    match &err {
        ChatError::Compile { line, .. } => assert_eq!(*line, Some(2)),
        other => panic!("expected a compile error, got {other:?}"),
    }
    assert!(err
        .to_string()
        .starts_with("chat template does not compile: "));
    assert!(!err.to_string().contains('\n'));
}

#[test]
fn undefined_variables_and_bad_calls_are_errors() {
    let tpl = ChatTemplate::new("{{ messages[0]['role'] }}", "", "").unwrap();
    // No messages: indexing past the end gives undefined, whose item is an error.
    let err = tpl.render(&[], false).unwrap_err();
    assert!(matches!(err, ChatError::Render { .. }), "{err:?}");
    assert!(err.to_string().ends_with("(line 1)"), "{err}");

    let tpl = ChatTemplate::new("{{ strftime_now('%Q') }}", "", "").unwrap();
    let err = tpl.render(&[], false).unwrap_err();
    assert!(
        err.to_string().contains("unsupported strftime directive"),
        "{err}"
    );
}

#[test]
fn strftime_now_gives_todays_date() {
    let tpl = ChatTemplate::new(
        "{{ strftime_now('%Y-%m-%d') }}|{{ strftime_now('%d %b %Y') }}",
        "",
        "",
    )
    .unwrap();
    let out = tpl.render(&[], false).unwrap();
    let (iso, human) = out.split_once('|').unwrap();
    let parts: Vec<&str> = iso.split('-').collect();
    assert_eq!(parts.len(), 3);
    let year: u32 = parts[0].parse().unwrap();
    assert!(year >= 2024, "{iso}");
    assert!(
        human.ends_with(parts[0]) && human.starts_with(parts[2]),
        "{out}"
    );
}

/// `ChatTemplate::for_model` as a runtime calls it: the file's template and its tokenizer.
fn for_model(spec: &TokenizerSpec) -> Result<ChatTemplate, ChatError> {
    let tokenizer = Tokenizer::from_spec(spec).expect("tokenizer");
    ChatTemplate::for_model(spec.chat_template.as_deref(), &tokenizer)
}

#[test]
fn for_model_uses_the_file_template_or_a_matching_stand_in() {
    if let Some(spec) = spec_of(SMOLLM2) {
        let own = for_model(&spec).unwrap();
        let chat = msgs(&[("user", "What is the capital of France?")]);
        assert_eq!(
            own.render(&chat, true).unwrap(),
            template_of(&spec).render(&chat, true).unwrap()
        );
    }
    let Some(spec) = spec_of(GEMMA3) else { return };
    // No template in this GGUF: the stand-in chosen from <start_of_turn> must
    // agree with Gemma 3's published template on plain-text conversations.
    let stand_in = for_model(&spec).unwrap();
    let official = ChatTemplate::new(GEMMA3_TEMPLATE, "<bos>", "<eos>").unwrap();
    let conversations = [
        msgs(&[("user", "What is the capital of France?")]),
        msgs(&[("system", "Answer in one word."), ("user", " Hi \n")]),
        msgs(&[
            ("system", "Be brief."),
            ("user", "What is the capital of France?"),
            ("assistant", " Paris. "),
            ("user", "And of Italy?"),
        ]),
        msgs(&[("user", "Hi"), ("assistant", "Hello!")]),
        msgs(&[("system", "only a system message")]),
    ];
    for chat in &conversations {
        for agp in [true, false] {
            assert_eq!(
                stand_in.render(chat, agp).unwrap(),
                official.render(chat, agp).unwrap(),
                "{chat:?} add_generation_prompt={agp}"
            );
        }
    }

    let mut bare = spec.clone();
    bare.token_bytes = b"abc".to_vec();
    bare.token_offsets = vec![0, 1, 2, 3];
    assert!(matches!(for_model(&bare), Err(ChatError::NoTemplate)));
}
