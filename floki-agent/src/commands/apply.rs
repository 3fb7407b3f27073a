//! `floki-agent apply FILE` and `floki-agent delete NAME`.

use anyhow::{Context as _, bail};
use floki_agent::status::request;
use serde_json::{Value, json};

use crate::cli::{ApplyArgs, DeleteArgs};

pub async fn apply(args: ApplyArgs) -> anyhow::Result<()> {
    let yaml = if args.file.as_os_str() == "-" {
        std::io::read_to_string(std::io::stdin()).context("reading the spec from standard input")?
    } else {
        std::fs::read_to_string(&args.file)
            .with_context(|| format!("reading {}", args.file.display()))?
    };
    let answer = request(&args.admin, &json!({"request": "apply", "yaml": yaml})).await?;
    if let Some(applied) = answer.get("applied") {
        let token = applied["token"].as_str().unwrap_or_default();
        eprintln!(
            "floki: workflow {} applied on {}; its channels must present this token (FLOKI_TOKEN):",
            applied["name"],
            nodes(applied)
        );
        println!("{token}");
        return Ok(());
    }
    fail(&answer, &args.file.display().to_string())
}

pub async fn delete(args: DeleteArgs) -> anyhow::Result<()> {
    let answer = request(
        &args.admin,
        &json!({"request": "delete", "name": args.name}),
    )
    .await?;
    if let Some(deleted) = answer.get("deleted") {
        eprintln!(
            "floki: workflow {} deleted on {}",
            deleted["name"],
            nodes(deleted)
        );
        return Ok(());
    }
    fail(&answer, &args.name)
}

fn nodes(outcome: &Value) -> String {
    outcome["nodes"]
        .as_array()
        .map(|nodes| {
            nodes
                .iter()
                .filter_map(Value::as_str)
                .collect::<Vec<_>>()
                .join(", ")
        })
        .unwrap_or_default()
}

fn fail(answer: &Value, what: &str) -> anyhow::Result<()> {
    let error = &answer["error"];
    let mut message = error["message"]
        .as_str()
        .unwrap_or("unexpected answer")
        .to_owned();
    for problem in error["errors"].as_array().into_iter().flatten() {
        message.push_str(&format!(
            "\n  {what}: {}: {}",
            problem["field"].as_str().unwrap_or("?"),
            problem["reason"].as_str().unwrap_or("?")
        ));
    }
    bail!("{message}")
}
