//! Network configuration through the system's own tools, each fed a whole script on its
//! standard input: `ip -batch -` (iproute2) and `nft -f -` (nftables), so a set of changes is
//! one process and nftables applies its script atomically.

use tokio::io::AsyncWriteExt as _;

use crate::JailError;

/// Runs `program args...` with `script` on its standard input.
async fn feed(program: &str, args: &[&str], script: &str, package: &str) -> Result<(), JailError> {
    let mut child = tokio::process::Command::new(program)
        .args(args)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .map_err(|source| JailError::Tool { program: program.to_string(), package: package.to_string(), source })?;
    if let Some(mut stdin) = child.stdin.take() {
        stdin.write_all(script.as_bytes()).await.map_err(|source| JailError::Tool { program: program.to_string(), package: package.to_string(), source })?;
    }
    let out = child.wait_with_output().await.map_err(|source| JailError::Tool { program: program.to_string(), package: package.to_string(), source })?;
    if !out.status.success() {
        return Err(JailError::Network(format!("`{program} {}` failed: {}", args.join(" "), String::from_utf8_lossy(&out.stderr).trim())));
    }
    Ok(())
}

/// Applies an nftables script (atomically).
pub async fn nft(script: &str) -> Result<(), JailError> {
    feed("nft", &["-f", "-"], script, "nftables").await
}

/// Runs iproute2 commands, one per line of `batch`, with `args` before `-batch -`.
pub async fn ip(args: &[&str], batch: &str) -> Result<(), JailError> {
    let args: Vec<&str> = args.iter().copied().chain(["-batch", "-"]).collect();
    feed("ip", &args, batch, "iproute2").await
}
