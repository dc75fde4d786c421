//! Real servers for tests, each throwaway and on loopback: a PostgreSQL cluster
//! ([`Postgres`]) and a nats-server with JetStream ([`Nats`]). Both come from Debian's packages
//! (`./scripts/test.sh` installs them); a test that needs one that is missing fails and says
//! how to install it, it never passes silently.
#![forbid(unsafe_code)]

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A loopback port free now (the kernel's pick; a later bind may race, which tests tolerate).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).map(|a| a.port()).expect("binding a loopback port")
}

fn wait_for_port(port: u16, what: &str, within: Duration) {
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let start = Instant::now();
    while TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_err() {
        assert!(start.elapsed() < within, "{what} did not listen on 127.0.0.1:{port} within {within:?}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn run(cmd: &mut Command, what: &str) {
    let out = cmd.output().unwrap_or_else(|e| panic!("{what}: could not run {cmd:?}: {e}"));
    assert!(out.status.success(), "{what} failed ({}): {}{}", out.status, String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
}

/// The newest PostgreSQL server binaries of Debian's layout (`/usr/lib/postgresql/N/bin`).
fn postgres_bin() -> PathBuf {
    let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| Some((e.file_name().to_str()?.parse().ok()?, e.path().join("bin"))))
        .filter(|(_, bin): &(u32, PathBuf)| bin.join("initdb").exists())
        .collect();
    versions.sort();
    versions.pop().map(|(_, bin)| bin).unwrap_or_else(|| {
        panic!("PostgreSQL is not installed (no /usr/lib/postgresql/*/bin/initdb): run ./scripts/test.sh, which installs it, or `apt-get install postgresql`")
    })
}

/// A throwaway PostgreSQL cluster in a temporary directory, listening on 127.0.0.1 only, with
/// trust authentication for its `postgres` user. Stopped (immediately) when dropped.
pub struct Postgres {
    dir: tempfile::TempDir,
    bin: PathBuf,
    pub port: u16,
    databases: std::sync::atomic::AtomicU32,
    durable: bool,
}

impl Postgres {
    /// Makes and starts a cluster (about 2 s), without fsync (tests need no durability
    /// across power cuts). As root, it runs as the `postgres` user.
    pub fn start() -> Postgres {
        Self::start_with(false)
    }

    /// As [`Postgres::start`], with fsync on: commits are durable, as in production
    /// (for benchmarks).
    pub fn start_durable() -> Postgres {
        Self::start_with(true)
    }

    fn start_with(durable: bool) -> Postgres {
        let bin = postgres_bin();
        let dir = tempfile::Builder::new().prefix("hangar-pg-").tempdir().expect("a temp dir for PostgreSQL");
        let data = dir.path().join("data");
        std::fs::create_dir(&data).expect("the PostgreSQL data dir");
        run(Command::new("chown").args(["-R", "postgres:postgres"]).arg(dir.path()), "giving the cluster dir to the postgres user");
        let as_postgres = |program: &Path| {
            let mut c = Command::new("runuser");
            c.args(["-u", "postgres", "--"]).arg(program);
            c
        };
        let port = free_port();
        run(as_postgres(&bin.join("initdb")).args(["-A", "trust", "-U", "postgres", "--no-sync", "-E", "UTF8", "--locale", "C", "-D"]).arg(&data), "initdb");
        let pg = Postgres { dir, bin, port, databases: Default::default(), durable };
        pg.resume();
        pg
    }

    /// Starts it again after [`Postgres::stop`] (same port, same data).
    pub fn resume(&self) {
        let fsync = if self.durable { "on" } else { "off" };
        let options = format!("-c listen_addresses=127.0.0.1 -p {} -k {} -c fsync={fsync} -c max_connections=400", self.port, self.dir.path().display());
        run(self.pg_ctl_command().args(["-o", &options, "-l"]).arg(self.dir.path().join("log")).args(["-w", "-t", "60", "start"]), "pg_ctl start");
        wait_for_port(self.port, "PostgreSQL", Duration::from_secs(30));
    }

    /// Stops it at once (as a crash would; committed data stays).
    pub fn stop(&self) {
        self.pg_ctl("stop");
    }

    /// The URL of database `db` on this cluster.
    pub fn url(&self, db: &str) -> String {
        format!("postgres://postgres@127.0.0.1:{}/{db}", self.port)
    }

    /// Creates a new, empty database and returns its URL.
    pub fn fresh_database(&self) -> String {
        let n = self.databases.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let name = format!("test_{n}");
        self.sql("postgres", &format!("CREATE DATABASE {name}"));
        self.url(&name)
    }

    /// Runs SQL with psql on database `db`.
    pub fn sql(&self, db: &str, sql: &str) {
        run(Command::new("psql").args(["-q", "-v", "ON_ERROR_STOP=1", "-d", &self.url(db), "-c", sql]), "psql");
    }

    /// `pg_ctl -D <data>`, as the postgres user, its output dropped.
    fn pg_ctl_command(&self) -> Command {
        let mut c = Command::new("runuser");
        c.args(["-u", "postgres", "--"]).arg(self.bin.join("pg_ctl")).arg("-D").arg(self.dir.path().join("data")).stdout(Stdio::null());
        c
    }

    fn pg_ctl(&self, action: &str) {
        run(self.pg_ctl_command().args(["-m", "immediate", "-w", action]), &format!("pg_ctl {action}"));
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        if !std::thread::panicking() {
            self.pg_ctl("stop");
        } else {
            let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| self.pg_ctl("stop")));
        }
    }
}

/// A throwaway nats-server with JetStream on (its store in a temporary directory), on
/// 127.0.0.1 only. Killed when dropped; [`Nats::stop`] and [`Nats::start`] take it away and
/// bring it back on the same port.
pub struct Nats {
    dir: tempfile::TempDir,
    pub port: u16,
    child: Option<Child>,
}

impl Nats {
    pub fn start() -> Nats {
        let dir = tempfile::Builder::new().prefix("hangar-nats-").tempdir().expect("a temp dir for nats-server");
        let mut nats = Nats { dir, port: free_port(), child: None };
        nats.resume();
        nats
    }

    /// `nats://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    /// Starts it again after [`Nats::stop`].
    pub fn resume(&mut self) {
        let program = ["/usr/sbin/nats-server", "/usr/bin/nats-server"]
            .into_iter()
            .find(|p| Path::new(p).exists())
            .unwrap_or_else(|| panic!("nats-server is not installed: run ./scripts/test.sh, which installs it, or `apt-get install nats-server`"));
        let log = std::fs::File::create(self.dir.path().join("log")).expect("the nats-server log");
        let child = Command::new(program)
            .args(["-js", "-a", "127.0.0.1", "-p", &self.port.to_string(), "-sd"])
            .arg(self.dir.path().join("js"))
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("starting nats-server: {e}"));
        self.child = Some(child);
        wait_for_port(self.port, "nats-server", Duration::from_secs(20));
    }

    /// Kills it (its JetStream files stay, as after a crash).
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for Nats {
    fn drop(&mut self) {
        self.stop();
    }
}
