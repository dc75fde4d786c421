//! docs/cli.md is generated from the clap definitions, so the reference cannot drift from the
//! CLI: this test fails when it is stale, and `HANGAR_BLESS=1` rewrites it.

#[test]
fn the_cli_reference_is_current() {
    let options = clap_markdown::MarkdownOptions::new().title("The hangar command line".into()).show_footer(false);
    let generated = format!(
        "<!-- Generated from crates/cli/src/args.rs by crates/cli/tests/reference.rs; do not edit. -->\n\n{}",
        clap_markdown::help_markdown_custom::<hangar_cli::Cli>(&options)
    );
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../docs/cli.md");
    if std::env::var_os("HANGAR_BLESS").is_some() {
        std::fs::write(&path, &generated).expect("writing docs/cli.md");
        return;
    }
    let kept = std::fs::read_to_string(&path).unwrap_or_default();
    assert!(
        kept == generated,
        "docs/cli.md is stale (the CLI's flags or help changed); regenerate it with `HANGAR_BLESS=1 cargo test -p hangar-cli --test reference`"
    );
}
