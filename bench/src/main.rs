//! `lula-bench`: see the crate docs of `lula_bench`.

use std::path::Path;
use std::process::ExitCode;

use anyhow::Context as _;
use clap::Parser as _;
use lula_bench::cli::{Cli, Command};

fn main() -> ExitCode {
    let cli = Cli::parse();
    let log_file = match &cli.command {
        Command::Run(args) => args.log_file.as_deref(),
        Command::ServeHub(_) | Command::ServeClient(_) => None,
    };
    if let Err(e) = init_logging(log_file) {
        eprintln!("lula-bench: {e:#}");
        return ExitCode::FAILURE;
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("lula-bench: cannot start a runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async {
        match cli.command {
            Command::ServeHub(args) => {
                lula_bench::hub_process::serve(args.listen, args.redis_url, args.max_frame_bytes)
                    .await?;
                Ok(true)
            }
            Command::ServeClient(args) => {
                lula_bench::client_process::serve(*args).await?;
                Ok(true)
            }
            Command::Run(args) => {
                let exe = std::env::current_exe().context("find this executable")?;
                let report = lula_bench::run(&args.config(exe)).await;
                if args.json {
                    println!("{}", serde_json::to_string_pretty(&report)?);
                } else {
                    print!("{}", report.to_text());
                }
                Ok::<_, anyhow::Error>(report.passed())
            }
        }
    });
    match result {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(e) => {
            eprintln!("lula-bench: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Logs (`RUST_LOG`, default `warn`) to `file`, or to stderr; the table
/// goes to stdout either way.
fn init_logging(file: Option<&Path>) -> anyhow::Result<()> {
    let filter =
        tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(false);
    match file {
        Some(path) => {
            let file = std::fs::File::create(path)
                .with_context(|| format!("create log file {}", path.display()))?;
            builder.with_writer(std::sync::Mutex::new(file)).init();
        }
        None => builder.with_writer(std::io::stderr).init(),
    }
    Ok(())
}
