//! `lula-chaos`: see the crate docs of `lula_chaos`.

use std::process::ExitCode;

use anyhow::Context as _;
use clap::Parser as _;
use lula_chaos::cli::{Cli, Command};
use lula_chaos::services;

fn main() -> ExitCode {
    let cli = Cli::parse();
    if !matches!(cli.command, Command::Run(_)) {
        // The services log to stderr, which the suite sends to their log file.
        tracing_subscriber::fmt()
            .with_env_filter(
                tracing_subscriber::EnvFilter::try_from_default_env()
                    .unwrap_or_else(|_| "info".into()),
            )
            .with_ansi(false)
            .with_writer(std::io::stderr)
            .init();
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("lula-chaos: cannot start a runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async {
        match cli.command {
            Command::ServeHub(a) => services::serve_hub(a).await.map(|()| true),
            Command::ServeAuth(a) => services::serve_auth(a).await.map(|()| true),
            Command::RunClient(a) => services::run_client(a).await.map(|()| true),
            Command::Run(args) => {
                let exe = std::env::current_exe().context("find this executable")?;
                let config = args.config(exe);
                eprintln!(
                    "lula-chaos: {:?} mode, seed {}, run dir {}",
                    config.mode,
                    config.seed,
                    config.run_dir.display()
                );
                let report = lula_chaos::run(&config).await?;
                print!("{}", report.to_text());
                Ok(report.passed())
            }
        }
    });
    match result {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(e) => {
            eprintln!("lula-chaos: {e:#}");
            ExitCode::FAILURE
        }
    }
}
