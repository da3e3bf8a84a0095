//! `smq bench --profile` through the real binary on SmolLM2: the JSON carries the per-op
//! profiles of a prompt token and of a decoded token, and the text output prints their
//! tables.

mod common;

use common::{arg, real_model, Sandbox, SMOLLM};

#[test]
fn bench_profile_reports_per_op_shares() {
    let Some(model) = real_model(SMOLLM) else {
        return;
    };
    let sb = Sandbox::new();
    let model = arg(&model);
    let tiny = ["-p", "4", "-n", "2", "-r", "1"];

    let out = sb
        .ok(["bench", model]
            .into_iter()
            .chain(tiny)
            .chain(["--profile", "--json"]))
        .json();
    assert!(out["tg_tok_s"].as_f64().unwrap() > 0.0);
    check_profile(&out["profile"], "tg2", 2);
    check_profile(&out["profile_pp"], "pp4", 4);

    // Without --json: the tables, each ending with the remainder and the total.
    let text = sb
        .ok(["bench", model]
            .into_iter()
            .chain(tiny)
            .chain(["--profile"]))
        .stdout;
    for pass in ["profile of pp4", "profile of tg2"] {
        assert!(text.contains(pass), "{text}");
    }
    for row in ["qkv_matmul", "attention", "other", "total"] {
        assert_eq!(
            text.lines()
                .filter(|l| l.trim_start().starts_with(row))
                .count(),
            2,
            "not two {row} rows in:\n{text}"
        );
    }

    // Without --profile there is no profile.
    let plain = sb
        .ok(["bench", model].into_iter().chain(tiny).chain(["--json"]))
        .json();
    assert!(plain["profile"].is_null());
    assert!(plain["profile_pp"].is_null());
}

/// One pass's profile: every op timed, and the ops plus the remainder make the token.
fn check_profile(p: &serde_json::Value, pass: &str, tokens: u64) {
    assert_eq!(p["pass"], pass);
    assert_eq!(p["tokens"], tokens);
    let wall = p["wall_ms_per_token"].as_f64().unwrap();
    assert!(wall > 0.0);
    let ops = p["ops"].as_array().expect("profile.ops is an array");
    let mut names = Vec::new();
    let mut share_sum = p["other_share_pct"].as_f64().unwrap();
    let mut ms_sum = p["other_ms_per_token"].as_f64().unwrap();
    for op in ops {
        let name = op["op"].as_str().unwrap();
        names.push(name);
        for key in ["ms_per_token", "share_pct", "calls_per_token"] {
            assert!(op[key].as_f64().is_some(), "{name} lacks {key}");
        }
        share_sum += op["share_pct"].as_f64().unwrap();
        ms_sum += op["ms_per_token"].as_f64().unwrap();
    }
    for name in ["qkv_matmul", "attention", "gate_up_matmul", "ffn_down"] {
        let op = ops.iter().find(|o| o["op"] == name).expect(name);
        assert!(op["calls_per_token"].as_f64().unwrap() > 0.0, "{name}");
    }
    assert!(names.contains(&"final_norm_lm_head"));
    // The ops plus the untimed remainder make up the token.
    assert!(
        (share_sum - 100.0).abs() < 1e-6,
        "shares sum to {share_sum}"
    );
    assert!((ms_sum - wall).abs() < 1e-6 * wall.max(1.0));
}
