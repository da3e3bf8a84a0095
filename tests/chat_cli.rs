//! Chat through the real binary: `run --chat` prompts rendered with the model's template
//! (SmolLM2's own, Gemma's stand-in) token for token, the interactive `chat` keeping the
//! conversation in the KV cache, its commands, Ctrl-C and a full context, template
//! failures, and what `inspect` says about chat.

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::path::Path;
use std::process::{Child, Stdio};

use common::{arg, read, real_model, Run, Sandbox, GEMMA, SMOLLM};
use serde_json::Value;
use smq_converter::gguf::{write_gguf, GgufFile, GgufLayout, TensorWrite};
use smq_format::MetadataValue;

fn reference(name: &str) -> Value {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/reference")
        .join(name);
    serde_json::from_slice(&read(&path)).unwrap()
}

fn ids(v: &Value) -> Vec<u64> {
    v.as_array()
        .unwrap_or_else(|| panic!("not an array: {v}"))
        .iter()
        .map(|x| x.as_u64().unwrap())
        .collect()
}

/// The reference's ids for the one chat-formatted prompt it holds.
fn reference_chat_ids(reference: &Value, turn_marker: &str) -> Vec<u64> {
    let entry = reference["logits"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["prompt"].as_str().unwrap().contains(turn_marker))
        .expect("the reference has a chat prompt");
    ids(&entry["prompt_ids"])
}

const QUESTION: &str = "What is 2+2?";
const SMOLLM_SYSTEM: &str =
    "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n";

#[test]
fn smollm_run_chat_renders_its_template_and_ends_at_end_of_turn() {
    let Some(model) = real_model(SMOLLM) else {
        return;
    };
    let sb = Sandbox::new();
    let model = arg(&model);
    let out = sb
        .ok([
            "run", model, "--chat", "-p", QUESTION, "--temp", "0", "-n", "64", "--json",
        ])
        .json();
    assert_eq!(out["finish_reason"], "eos", "{out}");
    assert!(out["text"].as_str().unwrap().contains('4'), "{out}");
    let user_turn = format!("<|im_start|>user\n{QUESTION}<|im_end|>\n<|im_start|>assistant\n");
    assert_eq!(
        out["chat_prompt"].as_str().unwrap(),
        format!("{SMOLLM_SYSTEM}{user_turn}")
    );

    // llama.cpp's ids for the user turn alone end our prompt; what comes before is
    // exactly the template's default system turn, with no BOS added (the template's
    // first token, <|im_start|>, is SmolLM2's BOS).
    let prompt = ids(&out["prompt_ids"]);
    let user_ids = reference_chat_ids(
        &reference("smollm2-135m-instruct-q4_1.json"),
        "<|im_start|>",
    );
    assert!(prompt.ends_with(&user_ids), "{prompt:?} vs {user_ids:?}");
    let system_ids = ids(&sb.ok(["tokenize", model, SMOLLM_SYSTEM, "--json"]).json()["ids"]);
    assert_eq!(prompt[..prompt.len() - user_ids.len()], system_ids[..]);
    assert_eq!(prompt[0], 1, "starts with <|im_start|>");
    assert_eq!(
        prompt.iter().filter(|&&id| id == 1).count(),
        3,
        "three turns"
    );

    // A system message replaces the default one.
    let out = sb
        .ok([
            "run",
            model,
            "--chat",
            "--system",
            "You answer with one number.",
            "-p",
            QUESTION,
            "--temp",
            "0",
            "-n",
            "64",
            "--json",
        ])
        .json();
    assert_eq!(
        out["chat_prompt"].as_str().unwrap(),
        format!("<|im_start|>system\nYou answer with one number.<|im_end|>\n{user_turn}")
    );
    assert!(ids(&out["prompt_ids"]).ends_with(&user_ids));
    // (Whether this answer ends within 64 tokens is a near-tie of greedy decoding on a
    // 135M model, which differs between kernel paths and from llama.cpp's own answer;
    // the end-of-turn stop is checked on the default system prompt above.)

    // --system belongs to --chat.
    let r = sb.run(["run", model, "--system", "x", "-p", QUESTION]);
    assert_ne!(r.code, Some(0));
}

#[test]
fn gemma_run_chat_uses_its_turn_markers_with_one_bos() {
    let Some(model) = real_model(GEMMA) else {
        return;
    };
    let sb = Sandbox::new();
    let model = arg(&model);
    let out = sb
        .ok([
            "run", model, "--direct", "--chat", "-p", QUESTION, "--temp", "0", "-n", "8", "--json",
        ])
        .json();
    assert_eq!(
        out["chat_prompt"].as_str().unwrap(),
        format!("<bos><start_of_turn>user\n{QUESTION}<end_of_turn>\n<start_of_turn>model\n")
    );
    // Exactly llama.cpp's ids for this turn: <bos> once (written by the template, not
    // added again), <start_of_turn> = 105 and <end_of_turn> = 106 as single tokens.
    let prompt = ids(&out["prompt_ids"]);
    let expected = reference_chat_ids(&reference("gemma-3-270m-q4_k_m.json"), "<start_of_turn>");
    assert_eq!(prompt, expected);
    assert_eq!(prompt.iter().filter(|&&id| id == 2).count(), 1);
    assert_eq!(prompt.iter().filter(|&&id| id == 105).count(), 2);
    assert_eq!(prompt.iter().filter(|&&id| id == 106).count(), 1);
    // This Gemma file is the pretrained model: like llama.cpp (see the reference's
    // greedy run of the same prompt) it does not close its turn within a few tokens.
    // What ends a turn is checked through the end-of-turn list.
    assert!(!ids(&out["ids"]).contains(&106));
    let eot = &sb.ok(["inspect", model, "--json"]).json()["tokenizer"]["end_of_turn"];
    assert!(
        eot.as_array()
            .unwrap()
            .iter()
            .any(|t| t["id"] == 106 && t["text"] == "<end_of_turn>"),
        "{eot}"
    );
}

/// `smq chat` with piped stdin and stdout.
fn spawn_chat(sb: &Sandbox, model: &str, extra: &[&str]) -> Child {
    let mut args = vec!["chat", model, "--direct", "--temp", "0"];
    args.extend_from_slice(extra);
    sb.cmd(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn smq chat")
}

/// Feeds `lines` to `smq chat` and waits for it to end; it must succeed.
fn chat(sb: &Sandbox, model: &str, extra: &[&str], lines: &[&str]) -> Run {
    let run = chat_any(sb, model, extra, lines);
    run.assert_success();
    run
}

/// Feeds `lines` to `smq chat` and waits for it to end.
fn chat_any(sb: &Sandbox, model: &str, extra: &[&str], lines: &[&str]) -> Run {
    let mut child = spawn_chat(sb, model, extra);
    let mut stdin = child.stdin.take().unwrap();
    for line in lines {
        writeln!(stdin, "{line}").unwrap();
    }
    drop(stdin);
    let out = child.wait_with_output().expect("wait for smq chat");
    Run::from_output(format!("smq chat {extra:?} <<< {lines:?}"), out)
}

fn json_lines(run: &Run) -> Vec<Value> {
    run.stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect()
}

fn n(v: &Value, key: &str) -> u64 {
    v[key].as_u64().unwrap_or_else(|| panic!("no {key} in {v}"))
}

#[test]
fn chat_keeps_the_conversation_in_the_cache() {
    let Some(model) = real_model(SMOLLM) else {
        return;
    };
    let sb = Sandbox::new();
    let model = arg(&model);
    // Answers are capped: whether greedy decoding reaches end-of-turn on its own is a
    // near-tie of a 135M model (its first answer here loops on some kernel paths), and
    // the cache behaviour under test does not depend on it.
    let run = chat(
        &sb,
        model,
        &["--json", "-n", "48"],
        &[
            "My name is Zorblax. Reply with OK.",
            "",
            "What is my name?",
            "/reset",
            "What is my name?",
            "/exit",
            "Never read.",
        ],
    );
    let turns = json_lines(&run);
    assert_eq!(turns.len(), 3, "{}", run.stdout);
    let (first, second, after_reset) = (&turns[0], &turns[1], &turns[2]);
    for t in &turns {
        let finish = t["finish_reason"].as_str().unwrap_or_default();
        assert!(finish == "eos" || finish == "length", "{t}");
        assert!(n(t, "gen_tokens") <= 48, "{t}");
        assert_eq!(t["interrupted"], false);
        assert_eq!(
            n(t, "prompt_tokens"),
            n(t, "evaluated_tokens") + n(t, "reused_tokens")
        );
    }

    // Turn 1 starts from an empty cache.
    assert_eq!(n(first, "reused_tokens"), 0);
    // Turn 2 sees turn 1, and evaluates only what is new: the whole of turn 1's prompt
    // comes from the cache, and far fewer tokens are evaluated than the conversation holds.
    assert!(
        second["text"].as_str().unwrap().contains("Zorblax"),
        "{second}"
    );
    assert!(
        n(second, "reused_tokens") >= n(first, "prompt_tokens"),
        "{second}"
    );
    assert!(
        n(second, "evaluated_tokens") * 3 < n(second, "prompt_tokens"),
        "{second}"
    );
    assert!(n(second, "prompt_tokens") > n(first, "context_tokens"));

    // /reset forgets everything: nothing reused, and the name is gone.
    assert_eq!(n(after_reset, "reused_tokens"), 0, "{after_reset}");
    assert!(
        !after_reset["text"].as_str().unwrap().contains("Zorblax"),
        "{after_reset}"
    );
    assert!(run.stderr.contains("(conversation cleared)"));
}

#[test]
fn chat_says_when_the_context_is_full_and_goes_on() {
    let Some(model) = real_model(SMOLLM) else {
        return;
    };
    let sb = Sandbox::new();
    let model = arg(&model);
    let run = chat(
        &sb,
        model,
        &["--json", "--ctx", "96", "--verbose"],
        &[
            "Write a long story about a dragon.",
            "Hello",
            "/reset",
            "Hi",
            "/nonsense",
        ],
    );
    let turns = json_lines(&run);
    assert_eq!(turns.len(), 2, "{}", run.stdout);
    assert_eq!(turns[0]["context_full"], true, "{}", turns[0]);
    assert_eq!(turns[0]["finish_reason"], "length");
    assert_eq!(n(&turns[0], "context_tokens"), 96);
    assert!(run.stderr.contains("the context is full"), "{}", run.stderr);
    // The next message cannot fit: said once, the turn dropped, the session kept.
    assert!(run.stderr.contains("no longer fits"), "{}", run.stderr);
    assert_eq!(turns[1]["context_full"], false, "{}", turns[1]);
    assert_eq!(turns[1]["turn"], 1);
    assert_eq!(n(&turns[1], "reused_tokens"), 0);
    assert!(run.stderr.contains("unknown command /nonsense"));
    // --verbose: one account per answer.
    assert_eq!(
        run.stderr.matches("cached tok").count(),
        2,
        "{}",
        run.stderr
    );
}

fn send_interrupt(child: &Child) {
    let status = std::process::Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .expect("run kill");
    assert!(status.success());
}

#[test]
fn ctrl_c_stops_the_answer_but_not_the_chat() {
    let Some(model) = real_model(SMOLLM) else {
        return;
    };
    let sb = Sandbox::new();
    let model = arg(&model);
    let mut child = spawn_chat(&sb, model, &["--verbose", "-n", "4000"]);
    let mut stdin = child.stdin.take().unwrap();
    writeln!(stdin, "Count from 1 to 1000, separated by commas.").unwrap();
    stdin.flush().unwrap();
    // Wait until the answer is streaming, then press Ctrl-C.
    let mut stdout = child.stdout.take().unwrap();
    let mut first = [0u8; 1];
    stdout.read_exact(&mut first).expect("the answer starts");
    send_interrupt(&child);
    writeln!(stdin, "Hello").unwrap();
    drop(stdin);
    let mut rest = String::new();
    stdout.read_to_string(&mut rest).unwrap();
    let mut stderr = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut stderr)
        .unwrap();
    let status = child.wait().unwrap();
    assert!(status.success(), "{status:?}\n{stderr}");
    assert!(stderr.contains("(answer stopped)"), "{stderr}");
    // Two accounts; the second turn reused the cache holding the stopped answer.
    let accounts: Vec<&str> = stderr
        .lines()
        .filter(|l| l.contains("cached tok"))
        .collect();
    assert_eq!(accounts.len(), 2, "{stderr}");
    let generated = |line: &str| -> usize {
        let after = line.split("generated ").nth(1).unwrap();
        after.split(' ').next().unwrap().parse().unwrap()
    };
    assert!(generated(accounts[0]) < 4000, "{}", accounts[0]);
    assert!(accounts[0].contains("| stop |"), "{}", accounts[0]);
    // "[prompt N new + M cached tok, ..."
    let counts = |line: &str| -> (usize, usize) {
        let words: Vec<&str> = line.split(' ').collect();
        (words[1].parse().unwrap(), words[4].parse().unwrap())
    };
    let (new_1, cached_1) = counts(accounts[0]);
    assert_eq!(cached_1, 0);
    // The second turn reuses the first prompt and what was kept of the stopped answer.
    let (_, cached_2) = counts(accounts[1]);
    assert!(cached_2 > new_1, "{}", accounts[1]);
    // The stopped answer and the next one both reached stdout.
    assert!(rest.lines().count() >= 2, "{rest}");
}

#[test]
fn ctrl_c_at_the_prompt_quits() {
    let Some(model) = real_model(SMOLLM) else {
        return;
    };
    let sb = Sandbox::new();
    let model = arg(&model);
    let mut child = spawn_chat(&sb, model, &["--json", "-n", "4"]);
    let mut stdin = child.stdin.take().unwrap();
    writeln!(stdin, "Hi").unwrap();
    stdin.flush().unwrap();
    // Once the answer is out, the chat waits at the prompt.
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    assert!(line.contains("\"turn\":0"), "{line}");
    send_interrupt(&child);
    let status = child.wait().unwrap();
    assert_eq!(status.code(), Some(130), "{status:?}");
    drop(stdin);
}

/// A copy of `src` whose `tokenizer.chat_template` is `template`.
fn with_template(src: &Path, dst: &Path, template: &str) {
    let bytes = read(src);
    let gguf = GgufFile::parse(&bytes).unwrap();
    let mut metadata = gguf.metadata.clone();
    let entry = metadata
        .entries
        .iter_mut()
        .find(|e| e.key == "tokenizer.chat_template")
        .expect("the model has a chat template");
    entry.value = MetadataValue::String(template.to_string());
    let tensors: Vec<TensorWrite> = gguf
        .tensors
        .iter()
        .map(|t| TensorWrite {
            info: t.clone(),
            data: gguf.tensor_data(&bytes, t).unwrap(),
        })
        .collect();
    let layout = GgufLayout {
        version: gguf.version,
        alignment: gguf.alignment,
        file_size: None,
    };
    let mut out = std::io::BufWriter::new(std::fs::File::create(dst).unwrap());
    write_gguf(&mut out, &layout, &metadata, &tensors).unwrap();
    out.flush().unwrap();
}

#[test]
fn a_broken_template_is_one_error_unless_fallback_is_asked_for() {
    let Some(model) = real_model(SMOLLM) else {
        return;
    };
    let sb = Sandbox::new();
    let cases = [
        (
            "unclosed.gguf",
            "{% for m in messages %}{{ m.content }}",
            "does not compile",
        ),
        (
            "raises.gguf",
            "{{ raise_exception('Only user turns, please') }}",
            "Only user turns, please",
        ),
    ];
    for (name, template, message) in cases {
        let broken = sb.path(name);
        with_template(&model, &broken, template);
        let broken = arg(&broken);
        let run_args = ["run", broken, "--direct", "--chat", "-p", QUESTION];
        let r = sb.run(run_args.iter().chain(&["-n", "4"]));
        r.assert_clean_error();
        assert!(r.error_line().contains(message), "{}", r.error_line());
        assert!(r.error_line().contains("--chat-template-fallback"));

        let out = sb.ok(run_args.iter().chain(&[
            "--chat-template-fallback",
            "--temp",
            "0",
            "-n",
            "64",
            "--json",
        ]));
        let json = out.json();
        assert_eq!(
            json["chat_prompt"].as_str().unwrap(),
            format!("<|im_start|>user\n{QUESTION}<|im_end|>\n<|im_start|>assistant\n")
        );
        // The same ids llama.cpp gives the plain ChatML turn.
        let expected = reference_chat_ids(
            &reference("smollm2-135m-instruct-q4_1.json"),
            "<|im_start|>",
        );
        assert_eq!(ids(&json["prompt_ids"]), expected);
        assert_eq!(json["finish_reason"], "eos");
        assert!(out.stderr.contains("using plain ChatML"), "{}", out.stderr);

        // The chat command follows the same rule.
        let r = chat_any(&sb, broken, &[], &[QUESTION]);
        r.assert_clean_error();
        assert!(r.error_line().contains(message), "{}", r.error_line());
        let r = chat(
            &sb,
            broken,
            &["--chat-template-fallback", "--json", "-n", "64"],
            &[QUESTION],
        );
        assert_eq!(json_lines(&r)[0]["finish_reason"], "eos", "{}", r.stdout);
    }
    // Fallback applies to chats only.
    let r = sb.run(["run", arg(&model), "--chat-template-fallback", "-p", "x"]);
    assert_ne!(r.code, Some(0));
}

#[test]
fn inspect_shows_the_template_and_the_end_of_turn_tokens() {
    let Some(smollm) = real_model(SMOLLM) else {
        return;
    };
    let sb = Sandbox::new();
    let smollm = arg(&smollm);
    let tok = &sb.ok(["inspect", smollm, "--json"]).json()["tokenizer"];
    let template = tok["chat_template"].as_str().unwrap();
    assert!(template.contains("<|im_start|>assistant\n"), "{template}");
    assert_eq!(tok["chat_template_source"], "file");
    let eot: Vec<(u64, &str)> = tok["end_of_turn"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| (t["id"].as_u64().unwrap(), t["text"].as_str().unwrap()))
        .collect();
    assert!(eot.contains(&(2, "<|im_end|>")), "{eot:?}");
    assert!(eot.contains(&(0, "<|endoftext|>")), "{eot:?}");

    let human = sb.ok(["inspect", smollm]).stdout;
    assert!(
        human.contains(&format!(
            "chat template: {} chars",
            template.chars().count()
        )),
        "{human}"
    );
    assert!(
        human.contains("    | {% for message in messages %}"),
        "{human}"
    );
    assert!(human.contains("2 \"<|im_end|>\""), "{human}");

    let Some(gemma) = real_model(GEMMA) else {
        return;
    };
    let gemma = arg(&gemma);
    let tok = &sb.ok(["inspect", gemma, "--json"]).json()["tokenizer"];
    assert_eq!(tok["chat_template"], Value::Null);
    assert_eq!(tok["chat_template_source"], "stand-in");
    let human = sb.ok(["inspect", gemma]).stdout;
    assert!(human.contains("106 \"<end_of_turn>\""), "{human}");
    assert!(human.contains("stand-in"), "{human}");
}
