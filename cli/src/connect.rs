//! `spate connect`: the standalone Connect worker (as Kafka's
//! connect-standalone.sh) and commands that call a worker's REST API (as
//! curl against port 8083 would).

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, bail};
use clap::{Args, Subcommand};

/// The largest answer read from a worker: far above any status or list.
const REST_RESPONSE_BYTES_MAX: u64 = 16 * 1024 * 1024;

#[derive(Subcommand, Debug)]
pub(crate) enum ConnectCommand {
    /// Run a standalone worker: WORKER.properties, then any number of
    /// connector .properties files (Kafka's connect-standalone.sh); any of
    /// them may be a YAML pipeline file (.yaml, .yml).
    Standalone(StandaloneArgs),
    /// List the worker's connectors.
    List(RestArgs),
    /// Show a connector's status and its tasks'.
    Status(NamedArgs),
    /// Show a connector's offsets (a source's stored positions, a sink's
    /// committed consumer offsets).
    Offsets(NamedArgs),
    /// Create a connector from a .properties, .yaml/.yml or .json config file.
    Create(CreateArgs),
    /// Pause a connector's tasks.
    Pause(NamedArgs),
    /// Resume a paused connector.
    Resume(NamedArgs),
    /// Restart a connector and its tasks.
    Restart(NamedArgs),
    /// Delete a connector (its stored offsets stay).
    Delete(NamedArgs),
}

#[derive(Args, Debug)]
pub(crate) struct StandaloneArgs {
    /// The worker's config (bootstrap.servers, converters, offsets file).
    worker_config: PathBuf,
    /// Connector configs (name, connector.class, tasks.max, ...).
    connector_configs: Vec<PathBuf>,
    /// Log filter (RUST_LOG syntax); default info.
    #[arg(long)]
    log_level: Option<String>,
}

#[derive(Args, Debug)]
pub(crate) struct RestArgs {
    /// The worker's REST API.
    #[arg(long, env = "SPATE_CONNECT_URL", default_value = "http://localhost:8083")]
    url: String,
}

#[derive(Args, Debug)]
pub(crate) struct NamedArgs {
    /// The connector's name.
    name: String,
    #[command(flatten)]
    rest: RestArgs,
}

#[derive(Args, Debug)]
pub(crate) struct CreateArgs {
    /// A connector config: .properties (Kafka's connector files), a YAML
    /// pipeline (.yaml, .yml) or JSON
    /// (`{"name":..., "config":{...}}`, as POST /connectors takes).
    file: PathBuf,
    #[command(flatten)]
    rest: RestArgs,
}

pub(crate) fn run(command: ConnectCommand) -> anyhow::Result<()> {
    match command {
        ConnectCommand::Standalone(args) => {
            init_logging(args.log_level.as_deref());
            spate_connect::standalone::run(&args.worker_config, &args.connector_configs)?;
            Ok(())
        }
        ConnectCommand::List(rest) => print_answer(call(&rest.url, "GET", "/connectors", None)?),
        ConnectCommand::Status(args) => {
            print_answer(call(&args.rest.url, "GET", &format!("/connectors/{}/status", args.name), None)?)
        }
        ConnectCommand::Offsets(args) => {
            print_answer(call(&args.rest.url, "GET", &format!("/connectors/{}/offsets", args.name), None)?)
        }
        ConnectCommand::Create(args) => {
            let body = create_body(&args.file)?;
            print_answer(call(&args.rest.url, "POST", "/connectors", Some(&body))?)
        }
        ConnectCommand::Pause(args) => named(&args, "PUT", "pause"),
        ConnectCommand::Resume(args) => named(&args, "PUT", "resume"),
        ConnectCommand::Restart(args) => named(&args, "POST", "restart?includeTasks=true"),
        ConnectCommand::Delete(args) => {
            print_answer(call(&args.rest.url, "DELETE", &format!("/connectors/{}", args.name), None)?)
        }
    }
}

fn init_logging(level: Option<&str>) {
    use tracing_subscriber::EnvFilter;
    let filter = match level {
        Some(level) => EnvFilter::new(level),
        None => EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")),
    };
    let _ = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).try_init();
}

fn named(args: &NamedArgs, method: &str, action: &str) -> anyhow::Result<()> {
    print_answer(call(&args.rest.url, method, &format!("/connectors/{}/{action}", args.name), None)?)
}

/// The POST /connectors body for a config file.
fn create_body(file: &std::path::Path) -> anyhow::Result<String> {
    let is_json = file.extension().is_some_and(|e| e.eq_ignore_ascii_case("json"));
    if is_json {
        let text = std::fs::read_to_string(file).with_context(|| format!("reading {}", file.display()))?;
        let json: serde_json::Value =
            serde_json::from_str(&text).with_context(|| format!("{} is not JSON", file.display()))?;
        return Ok(json.to_string());
    }
    let props = spate_connect::yaml::load_config_file(file)?;
    let Some(name) = props.get("name").cloned() else { bail!("{}: no name", file.display()) };
    Ok(serde_json::json!({"name": name, "config": props}).to_string())
}

/// An HTTP answer: status code and body.
#[derive(Debug)]
struct Answer {
    status: u16,
    body: String,
}

fn print_answer(answer: Answer) -> anyhow::Result<()> {
    if !(200..300).contains(&answer.status) {
        // Kafka's error body: {"error_code":..., "message":...}.
        let message = serde_json::from_str::<serde_json::Value>(&answer.body)
            .ok()
            .and_then(|v| v.get("message").and_then(|m| m.as_str()).map(str::to_string))
            .unwrap_or(answer.body);
        bail!("HTTP {}: {message}", answer.status);
    }
    let mut stdout = std::io::stdout().lock();
    if !answer.body.is_empty() {
        let pretty = serde_json::from_str::<serde_json::Value>(&answer.body)
            .ok()
            .and_then(|v| serde_json::to_string_pretty(&v).ok())
            .unwrap_or(answer.body);
        writeln!(stdout, "{pretty}")?;
    }
    Ok(())
}

/// One HTTP/1.1 request over a fresh connection (Connection: close): the
/// worker's answers are small, so a client library would add little.
fn call(url: &str, method: &str, path: &str, body: Option<&str>) -> anyhow::Result<Answer> {
    let authority = url
        .strip_prefix("http://")
        .with_context(|| format!("--url must start with http://, not {url}"))?
        .trim_end_matches('/');
    let mut stream =
        TcpStream::connect(authority).with_context(|| format!("cannot reach the Connect worker at {url}"))?;
    stream.set_read_timeout(Some(Duration::from_secs(60)))?;
    let body = body.unwrap_or("");
    let request = format!(
        "{method} {path} HTTP/1.1\r\nHost: {authority}\r\nAccept: application/json\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(request.as_bytes())?;
    let mut response = Vec::new();
    stream.take(REST_RESPONSE_BYTES_MAX).read_to_end(&mut response).context("reading the worker's answer")?;
    parse_response(&response)
}

fn parse_response(response: &[u8]) -> anyhow::Result<Answer> {
    let text = String::from_utf8_lossy(response);
    let (head, body) = text.split_once("\r\n\r\n").context("the worker's answer has no HTTP header")?;
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|code| code.parse().ok())
        .context("the worker's answer has no HTTP status")?;
    let chunked = head.lines().any(|line| {
        let line = line.to_ascii_lowercase();
        line.starts_with("transfer-encoding:") && line.contains("chunked")
    });
    let body = if chunked { dechunk(body) } else { body.to_string() };
    Ok(Answer { status, body })
}

fn dechunk(mut body: &str) -> String {
    let mut out = String::new();
    while let Some((size, rest)) = body.split_once("\r\n") {
        let Ok(size) = usize::from_str_radix(size.trim(), 16) else { break };
        if size == 0 || rest.len() < size {
            break;
        }
        out.push_str(&rest[..size]);
        body = rest[size..].trim_start_matches("\r\n");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_are_read_plain_or_chunked() {
        let plain = parse_response(b"HTTP/1.1 404 Not Found\r\ncontent-length: 2\r\n\r\n{}").expect("plain");
        assert_eq!((plain.status, plain.body.as_str()), (404, "{}"));
        let chunked =
            parse_response(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\n[\"a\r\n2\r\n\"]\r\n0\r\n\r\n")
                .expect("chunked");
        assert_eq!((chunked.status, chunked.body.as_str()), (200, "[\"a\"]"));
        assert!(parse_response(b"garbage").is_err());
    }
}
