//! Starts `nats-server` as a child process: one node or a cluster on loopback.
//!
//! `chatfabric dev` uses it to run the fabric on one machine, and the tests use it to get a real
//! server on free ports with a throw-away store ("always use dynamic ports so tests can run in
//! parallel"). The child is killed when the handle drops.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Why a nats-server could not be started.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    /// The binary is not installed.
    #[error(
        "nats-server not found ({0}); install it with `sudo apt-get install nats-server` \
         or point NATS_SERVER_BIN at the binary"
    )]
    NotInstalled(String),
    /// The process started but never became healthy.
    #[error("nats-server on port {port} did not become ready within {secs} s; its log: {log}")]
    NotReady {
        /// The client port.
        port: u16,
        /// How long we waited.
        secs: u64,
        /// The server's log file.
        log: String,
    },
    /// Creating the store directory or the log file failed.
    #[error("preparing nats-server files: {0}")]
    Io(#[from] std::io::Error),
}

/// Options of one server.
#[derive(Debug, Clone)]
pub struct ServerOptions {
    /// Client port; 0 picks a free one.
    pub port: u16,
    /// JetStream store directory; `None` uses a temporary directory removed on drop.
    pub store_dir: Option<PathBuf>,
    /// A config file passed with `-c` (accounts, permissions); command-line flags still apply.
    pub config_file: Option<PathBuf>,
    /// Server name (must be unique within a cluster).
    pub name: String,
}

impl Default for ServerOptions {
    fn default() -> Self {
        Self {
            port: 0,
            store_dir: None,
            config_file: None,
            name: "chatfabric".into(),
        }
    }
}

/// A running nats-server child process.
pub struct NatsServer {
    child: Option<Child>,
    args: Vec<String>,
    port: u16,
    monitor_port: u16,
    store: PathBuf,
    log: PathBuf,
    // Owns the temporary store (and log) so they live exactly as long as the server.
    _tmp: Option<tempfile::TempDir>,
}

/// A free TCP port on 127.0.0.1 for a listener: bound and released, never one this process was
/// given before (a server killed and restarted on its ports would otherwise race another test for
/// them), and below the kernel's ephemeral range, which outgoing connections take their source
/// ports from (a port the kernel picks for `bind(0)` can be the source port of a connection a
/// moment later, and the listener's bind then fails).
pub fn free_port() -> u16 {
    static GIVEN: std::sync::Mutex<Vec<u16>> = std::sync::Mutex::new(Vec::new());
    let mut given = GIVEN.lock().unwrap_or_else(|p| p.into_inner());
    let (low, high) = listener_ports();
    let span = u64::from(high - low);
    // Different processes start at different places (tests of several binaries may overlap).
    let mut x = u64::from(std::process::id()) << 32
        ^ std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos().into())
            .unwrap_or(0);
    for _ in 0..span {
        x = x
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        let port = low + ((x >> 33) % span) as u16;
        if !given.contains(&port) && TcpListener::bind(("127.0.0.1", port)).is_ok() {
            given.push(port);
            return port;
        }
    }
    let port = TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .unwrap_or(0);
    given.push(port);
    port
}

/// The 10,000 ports below the kernel's ephemeral range (`ip_local_port_range`, 32768 by default).
fn listener_ports() -> (u16, u16) {
    let ephemeral = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse::<u16>().ok())
        .unwrap_or(32_768)
        .max(11_024);
    (ephemeral - 10_000, ephemeral)
}

/// Where distributions install programs a normal user's `PATH` may lack: Debian's nats-server and
/// haproxy are in `/usr/sbin`; hand installs go to `/usr/local/bin`.
pub const FALLBACK_DIRS: [&str; 3] = ["/usr/local/bin", "/usr/sbin", "/sbin"];

/// The nats-server to run: `NATS_SERVER_BIN` if set, else `nats-server` from `PATH` or
/// [`FALLBACK_DIRS`], else the bare name (whose spawn then fails as [`ServerError::NotInstalled`]).
pub fn binary() -> PathBuf {
    if let Some(bin) = std::env::var_os("NATS_SERVER_BIN") {
        return bin.into();
    }
    find_program(
        "nats-server",
        std::env::var_os("PATH").as_deref(),
        &FALLBACK_DIRS,
    )
    .unwrap_or_else(|| "nats-server".into())
}

/// The first executable file `name` in the directories of `path` (a `PATH` value), then in
/// `fallbacks`.
pub fn find_program(
    name: &str,
    path: Option<&std::ffi::OsStr>,
    fallbacks: &[&str],
) -> Option<PathBuf> {
    let listed = path.into_iter().flat_map(std::env::split_paths);
    listed
        .chain(fallbacks.iter().map(PathBuf::from))
        .map(|dir| dir.join(name))
        .find(|p| is_executable(p))
}

fn is_executable(path: &Path) -> bool {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        path.metadata()
            .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
    }
    #[cfg(not(unix))]
    path.is_file()
}

impl NatsServer {
    /// Starts one JetStream-enabled server and waits until it is healthy.
    pub fn start(opts: ServerOptions) -> Result<Self, ServerError> {
        Self::spawn(opts, None)
    }

    /// Starts an `n`-node cluster on loopback and waits until every node is healthy and JetStream
    /// has a meta leader.
    pub fn start_cluster(n: usize) -> Result<Vec<Self>, ServerError> {
        Self::start_cluster_with(n, None)
    }

    /// [`start_cluster`](Self::start_cluster) with a config file (users, permissions) on every node.
    pub fn start_cluster_with(
        n: usize,
        config_file: Option<PathBuf>,
    ) -> Result<Vec<Self>, ServerError> {
        let cluster_ports: Vec<u16> = (0..n).map(|_| free_port()).collect();
        let routes = cluster_ports
            .iter()
            .map(|p| format!("nats://127.0.0.1:{p}"))
            .collect::<Vec<_>>()
            .join(",");
        let mut nodes = Vec::with_capacity(n);
        for (i, cport) in cluster_ports.iter().enumerate() {
            let opts = ServerOptions {
                name: format!("n{i}"),
                config_file: config_file.clone(),
                ..Default::default()
            };
            let cluster = vec![
                "--cluster_name".into(),
                "chatfabric".into(),
                "--cluster".into(),
                format!("nats://127.0.0.1:{cport}"),
                "--routes".into(),
                routes.clone(),
            ];
            nodes.push(Self::launch(opts, cluster)?);
        }
        for node in &mut nodes {
            node.wait_ready(Duration::from_secs(30))?;
        }
        Ok(nodes)
    }

    fn spawn(opts: ServerOptions, extra: Option<Vec<String>>) -> Result<Self, ServerError> {
        let mut s = Self::launch(opts, extra.unwrap_or_default())?;
        s.wait_ready(Duration::from_secs(20))?;
        Ok(s)
    }

    fn launch(opts: ServerOptions, extra: Vec<String>) -> Result<Self, ServerError> {
        let tmp = match opts.store_dir {
            Some(_) => None,
            None => Some(
                tempfile::Builder::new()
                    .prefix("chatfabric-nats")
                    .tempdir()?,
            ),
        };
        let store = match (&opts.store_dir, &tmp) {
            (Some(dir), _) => dir.clone(),
            (None, Some(t)) => t.path().join("js"),
            (None, None) => unreachable!("a temporary dir exists when no store dir is given"),
        };
        std::fs::create_dir_all(&store)?;
        let log = store.with_extension("log");
        let port = if opts.port == 0 {
            free_port()
        } else {
            opts.port
        };
        let monitor_port = free_port();
        let mut args = vec![
            "-a".into(),
            "127.0.0.1".into(),
            "-p".into(),
            port.to_string(),
            "-m".into(),
            monitor_port.to_string(),
            "-js".into(),
            "-sd".into(),
            store.display().to_string(),
            "-n".into(),
            opts.name.clone(),
            "-l".into(),
            log.display().to_string(),
        ];
        if let Some(conf) = &opts.config_file {
            args.push("-c".into());
            args.push(conf.display().to_string());
        }
        args.extend(extra);
        let mut s = Self {
            child: None,
            args,
            port,
            monitor_port,
            store,
            log,
            _tmp: tmp,
        };
        s.spawn_child()?;
        Ok(s)
    }

    fn spawn_child(&mut self) -> Result<(), ServerError> {
        let bin = binary();
        let child = Command::new(&bin)
            .args(&self.args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| match e.kind() {
                std::io::ErrorKind::NotFound => {
                    ServerError::NotInstalled(bin.display().to_string())
                }
                _ => ServerError::Io(e),
            })?;
        self.child = Some(child);
        Ok(())
    }

    /// Polls the monitoring endpoint's `/healthz` (which checks JetStream) until it answers OK.
    fn wait_ready(&mut self, limit: Duration) -> Result<(), ServerError> {
        let start = Instant::now();
        while start.elapsed() < limit {
            if let Some(child) = self.child.as_mut() {
                if let Ok(Some(_)) = child.try_wait() {
                    break; // exited: no point waiting
                }
            }
            if healthz(self.monitor_port) {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Err(ServerError::NotReady {
            port: self.port,
            secs: limit.as_secs(),
            log: std::fs::read_to_string(&self.log).unwrap_or_default(),
        })
    }

    /// The client URL, `nats://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    /// The client port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The monitoring port (`/healthz`, `/jsz`, `/varz`).
    pub fn monitor_port(&self) -> u16 {
        self.monitor_port
    }

    /// Requests of the fabric's own connections (named `chatfabric-<role>...`, logged in as a
    /// role) that the server refused for want of a permission, from its log. A test may try what
    /// a role must not do on a connection of its own name; those are not counted.
    pub fn role_violations(&self) -> Vec<String> {
        let log = std::fs::read_to_string(&self.log).unwrap_or_default();
        // nats-server logs `"<version>:<lang>:<name>" - Publish Violation - User "<user>", ...`.
        let users: Vec<String> = crate::permissions::Role::ALL
            .iter()
            .map(|r| format!("User \"{}\"", r.user()))
            .collect();
        log.lines()
            .filter(|l| l.contains("Violation") && l.contains(":chatfabric-"))
            .filter(|l| users.iter().any(|u| l.contains(u.as_str())))
            .map(str::to_owned)
            .collect()
    }

    /// The JetStream store directory.
    pub fn store_dir(&self) -> &Path {
        &self.store
    }

    /// Kills the server with SIGKILL (no clean shutdown), as a crash would.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill(); // already exited is fine
            let _ = child.wait();
        }
    }

    /// Stops the server with SIGTERM-equivalent lame-duck-free shutdown and waits for it.
    pub fn stop(&mut self) {
        if let Some(child) = self.child.as_ref() {
            // Signal via the nats-server binary's own `--signal stop=<pid>` so no libc call is needed.
            let _ = Command::new(binary())
                .args(["--signal", &format!("stop={}", child.id())])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status();
        }
        if let Some(mut child) = self.child.take() {
            let _ = child.wait();
        }
    }

    /// The server process's id (`None` after [`kill`](Self::kill) or [`stop`](Self::stop)).
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Freezes the server with SIGSTOP, as a paused VM or a stalled disk would: its sockets stay
    /// open and nothing answers. [`resume`](Self::resume) thaws it.
    pub fn pause(&self) {
        self.signal("-STOP");
    }

    /// Thaws a [`pause`](Self::pause)d server with SIGCONT.
    pub fn resume(&self) {
        self.signal("-CONT");
    }

    fn signal(&self, signal: &str) {
        if let Some(pid) = self.pid() {
            let _ = Command::new("kill")
                .args([signal, &pid.to_string()])
                .status();
        }
    }

    /// Starts the server again with the same ports and store (after [`kill`](Self::kill) or
    /// [`stop`](Self::stop)) and waits until it is healthy.
    pub fn restart(&mut self) -> Result<(), ServerError> {
        self.kill();
        self.spawn_child()?;
        self.wait_ready(Duration::from_secs(30))
    }
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        self.kill();
    }
}

fn healthz(monitor_port: u16) -> bool {
    let addr = SocketAddr::from(([127, 0, 0, 1], monitor_port));
    let Ok(mut s) = TcpStream::connect_timeout(&addr, Duration::from_millis(200)) else {
        return false;
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
    if s.write_all(b"GET /healthz HTTP/1.0\r\nHost: localhost\r\n\r\n")
        .is_err()
    {
        return false;
    }
    let mut buf = String::new();
    let _ = s.read_to_string(&mut buf);
    buf.starts_with("HTTP/1.") && buf.contains(" 200 ") && buf.contains("ok")
}

#[cfg(test)]
mod tests {
    use super::find_program;
    use std::os::unix::fs::PermissionsExt;

    fn program(dir: &std::path::Path, name: &str, mode: u32) {
        let p = dir.join(name);
        std::fs::write(&p, "#!/bin/sh\n").expect("write");
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(mode)).expect("chmod");
    }

    /// `PATH` first, then the fallbacks (Debian's /usr/sbin, which a normal user's PATH lacks);
    /// files that are not executable are passed over.
    #[test]
    fn programs_are_found_on_path_then_in_the_fallback_dirs() {
        let (on_path, sbin) = (
            tempfile::tempdir().expect("dir"),
            tempfile::tempdir().expect("dir"),
        );
        let fallback = [sbin.path().to_str().expect("utf-8")];
        program(sbin.path(), "nats-server", 0o755);
        let path = std::env::join_paths([on_path.path()]).expect("PATH");
        assert_eq!(
            find_program("nats-server", Some(&path), &fallback),
            Some(sbin.path().join("nats-server"))
        );
        program(on_path.path(), "nats-server", 0o644);
        assert_eq!(
            find_program("nats-server", Some(&path), &fallback),
            Some(sbin.path().join("nats-server")),
            "a file without the executable bit is no program"
        );
        program(on_path.path(), "nats-server", 0o755);
        assert_eq!(
            find_program("nats-server", Some(&path), &fallback),
            Some(on_path.path().join("nats-server"))
        );
        assert_eq!(find_program("haproxy", None, &fallback), None);
    }
}
