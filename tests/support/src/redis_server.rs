//! A real Redis for the tests of global rate limits: Debian's `redis-server` on a free loopback
//! port, without persistence, in a directory of its own. A test can stop it and start it again
//! on the same port, or freeze it (SIGSTOP) so that it holds connections and answers nothing.
//! Dropping it kills the server and removes its directory.

use std::{
    net::{SocketAddr, TcpListener},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::Duration,
};

use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpStream,
    time::{Instant, sleep, timeout},
};

/// The Debian package that provides `redis-server`.
pub const APT_PACKAGE: &str = "redis-server";

/// How long a starting server may take to answer PING.
const READY_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, thiserror::Error)]
pub enum RedisHarnessError {
    #[error(
        "redis-server is not installed: it comes from Debian's package {APT_PACKAGE} \
         (`bash tools/apt.sh redis-server:{APT_PACKAGE}`, which make test runs)"
    )]
    Missing,
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },
    #[error("redis-server on port {port} did not answer PING within {after:?}; its log:\n{log}")]
    NotReady { port: u16, after: Duration, log: String },
}

fn io_error(context: impl Into<String>) -> impl FnOnce(std::io::Error) -> RedisHarnessError {
    let context = context.into();
    move |source| RedisHarnessError::Io { context, source }
}

/// A running `redis-server`.
pub struct RedisServer {
    binary: PathBuf,
    port: u16,
    dir: PathBuf,
    child: Option<Child>,
}

impl RedisServer {
    /// Starts a server on a free loopback port and waits until it answers PING.
    pub async fn start() -> Result<Self, RedisHarnessError> {
        let binary = find_binary()?;
        let mut last_error = None;
        // A free port can be taken between finding it and binding it: try another.
        for _ in 0..3 {
            let port = free_port()?;
            let dir = std::env::temp_dir().join(format!("microgate-redis-{}-{port}", std::process::id()));
            std::fs::create_dir_all(&dir).map_err(io_error(format!("create {}", dir.display())))?;
            let mut server = RedisServer {
                binary: binary.clone(),
                port,
                dir,
                child: None,
            };
            match server.restart().await {
                Ok(()) => return Ok(server),
                Err(error) => last_error = Some(error),
            }
        }
        Err(last_error.unwrap_or(RedisHarnessError::Missing))
    }

    /// `redis://127.0.0.1:<port>/`.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/", self.port)
    }

    pub fn addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.port))
    }

    /// Kills the server (SIGKILL: no goodbye to its clients) and waits until it is gone. Its port
    /// then refuses connections.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts the server again on the same port, empty (nothing was persisted), and waits until
    /// it answers PING.
    pub async fn restart(&mut self) -> Result<(), RedisHarnessError> {
        self.stop();
        let log = self.dir.join("redis.log");
        let child = Command::new(&self.binary)
            .args(["--port", &self.port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no", "--protected-mode", "no"])
            .arg("--dir")
            .arg(&self.dir)
            .arg("--logfile")
            .arg(&log)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(io_error(format!("start {}", self.binary.display())))?;
        self.child = Some(child);
        let deadline = Instant::now() + READY_TIMEOUT;
        while Instant::now() < deadline {
            if ping(self.addr()).await {
                return Ok(());
            }
            if let Some(child) = &mut self.child
                && let Ok(Some(_)) = child.try_wait()
            {
                break;
            }
            sleep(Duration::from_millis(20)).await;
        }
        self.stop();
        Err(RedisHarnessError::NotReady {
            port: self.port,
            after: READY_TIMEOUT,
            log: std::fs::read_to_string(&log).unwrap_or_default(),
        })
    }

    /// Freezes the server (SIGSTOP): connections stay open, nothing is answered.
    pub fn pause(&self) -> Result<(), RedisHarnessError> {
        self.signal("STOP")
    }

    /// Thaws a paused server (SIGCONT).
    pub fn resume(&self) -> Result<(), RedisHarnessError> {
        self.signal("CONT")
    }

    fn signal(&self, signal: &str) -> Result<(), RedisHarnessError> {
        let Some(child) = &self.child else {
            return Ok(());
        };
        let status = Command::new("kill")
            .arg(format!("-{signal}"))
            .arg(child.id().to_string())
            .status()
            .map_err(io_error(format!("kill -{signal} redis-server")))?;
        if status.success() {
            Ok(())
        } else {
            Err(RedisHarnessError::Io {
                context: format!("kill -{signal} redis-server"),
                source: std::io::Error::other(format!("kill exited with {status}")),
            })
        }
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.stop();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// `redis-server` on the PATH or where Debian installs it.
fn find_binary() -> Result<PathBuf, RedisHarnessError> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain([PathBuf::from("/usr/bin"), PathBuf::from("/usr/sbin")])
        .map(|dir| dir.join("redis-server"))
        .find(|candidate| is_executable(candidate))
        .ok_or(RedisHarnessError::Missing)
}

fn is_executable(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path).is_ok_and(|meta| meta.is_file() && meta.permissions().mode() & 0o111 != 0)
}

fn free_port() -> Result<u16, RedisHarnessError> {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .map(|addr| addr.port())
        .map_err(io_error("find a free loopback port"))
}

/// Whether a Redis at `addr` answers PING with PONG within a second.
async fn ping(addr: SocketAddr) -> bool {
    let exchange = async {
        let mut stream = TcpStream::connect(addr).await?;
        stream.write_all(b"PING\r\n").await?;
        let mut reply = [0u8; 7];
        stream.read_exact(&mut reply).await?;
        Ok::<_, std::io::Error>(&reply == b"+PONG\r\n")
    };
    matches!(timeout(Duration::from_secs(1), exchange).await, Ok(Ok(true)))
}
