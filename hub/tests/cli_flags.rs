//! The README's configuration rule, held for `lula-hub`: every flag is also an
//! environment variable and every subcommand takes `--redis-url` (`REDIS_URL`).

#[test]
fn every_flag_has_an_env_var_and_every_subcommand_a_redis_url() {
    lula_testkit::cli::assert_every_flag_has_an_env_var(std::path::Path::new(env!(
        "CARGO_BIN_EXE_lula-hub"
    )));
}
