//! A static HTTP server on 127.0.0.1 for network-boot scenarios: nginx (Debian package
//! `nginx`) with a private configuration, started by the test, stopped by PID, and startable
//! again on the same port (a boot server that is down, then up).
//!
//! ```no_run
//! let mut server = qemu_tests::http::Nginx::serve("tree".as_ref())?;
//! println!("serving on 127.0.0.1:{}", server.port());
//! server.stop();
//! server.start()?;
//! # Ok::<(), qemu_tests::Error>(())
//! ```
use crate::error::{Error, IoContext, Result};
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::Duration;

/// One nginx serving a directory on 127.0.0.1.
pub struct Nginx {
    root: PathBuf,
    dir: tempfile::TempDir,
    port: u16,
    child: Option<Child>,
}

impl Nginx {
    /// Serves `root` on a free port of 127.0.0.1.
    pub fn serve(root: &Path) -> Result<Nginx> {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .ctx("finding a free port on", "127.0.0.1")?
            .port();
        let mut n = Nginx::stopped(root, port)?;
        n.start()?;
        Ok(n)
    }

    /// A server for `root` on `port`, not running yet.
    pub fn stopped(root: &Path, port: u16) -> Result<Nginx> {
        let dir = tempfile::Builder::new()
            .prefix("nginx-")
            .tempdir()
            .ctx("creating", std::env::temp_dir())?;
        Ok(Nginx {
            root: root.to_owned(),
            dir,
            port,
            child: None,
        })
    }

    /// The port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The access log so far.
    pub fn requests(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("access.log")).unwrap_or_default()
    }

    /// Starts nginx (if it is not running) and waits until it accepts connections.
    pub fn start(&mut self) -> Result<()> {
        if self.child.is_some() {
            return Ok(());
        }
        let d = self.dir.path();
        let conf = format!(
            "daemon off; master_process off; worker_processes 1; pid {d}/nginx.pid;\n\
             error_log {d}/error.log;\n\
             events {{ worker_connections 32; }}\n\
             http {{\n\
             \x20 access_log {d}/access.log;\n\
             \x20 client_body_temp_path {d}/b; proxy_temp_path {d}/p; fastcgi_temp_path {d}/f;\n\
             \x20 uwsgi_temp_path {d}/u; scgi_temp_path {d}/s;\n\
             \x20 default_type application/octet-stream;\n\
             \x20 server {{ listen 127.0.0.1:{port}; root {root}; }}\n\
             }}\n",
            d = d.display(),
            port = self.port,
            root = self.root.display()
        );
        let conf_path = d.join("nginx.conf");
        std::fs::write(&conf_path, conf).ctx("writing", &conf_path)?;
        let child = Command::new("nginx")
            .arg("-p")
            .arg(d)
            .arg("-e")
            .arg(d.join("error.log"))
            .arg("-c")
            .arg(&conf_path)
            .spawn()
            .map_err(|e| Error::Command {
                command: "nginx".into(),
                detail: format!("starting it (Debian package nginx, scripts/deps.sh): {e}"),
            })?;
        self.child = Some(child);
        for _ in 0..500 {
            if std::net::TcpStream::connect(("127.0.0.1", self.port)).is_ok() {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let log = std::fs::read_to_string(d.join("error.log")).unwrap_or_default();
        self.stop();
        Err(Error::Invalid(format!(
            "nginx did not listen on 127.0.0.1:{}: {log}",
            self.port
        )))
    }

    /// Stops nginx (by its PID) if it runs.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        self.stop();
    }
}
