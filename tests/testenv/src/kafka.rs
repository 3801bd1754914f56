//! A real Apache Kafka broker (KRaft, a single node that is its own controller)
//! on free loopback ports with a temporary log dir, run from the jars that
//! provision.sh resolved from Maven Central, on the machine's Java.

use std::fs::File;
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::bins::kafka_dir;
use crate::error::{Error, IoContext, Result};
use crate::process::{ManagedProcess, free_port, log_tail, spawn, terminate, wait_timeout};
use crate::tempdir::TempDir;

const START_TIMEOUT: Duration = Duration::from_secs(90);
/// What the broker logs once it serves requests.
const STARTED: &str = "Kafka Server started";

/// The broker's JVM: a small heap and a quick start (tests, not throughput).
const JVM_OPTS: [&str; 4] = [
    "-Xmx512m",
    "-Xms128m",
    "-XX:+UseSerialGC",
    "-Djava.awt.headless=true",
];

const LOG4J2: &str = "\
status = warn
appender.out.type = Console
appender.out.name = OUT
appender.out.layout.type = PatternLayout
appender.out.layout.pattern = [%d] %p %m (%c)%n
rootLogger.level = INFO
rootLogger.appenderRef.out.ref = OUT
logger.state.name = state.change.logger
logger.state.level = WARN
";

/// A running single-node Kafka broker; killed and its data removed on drop.
///
/// Topics are created automatically when first written (`num.partitions`
/// defaults to 4 here); offsets and transactions need one replica.
///
/// Starting is blocking (a JVM takes a few seconds): the Kafka clients that
/// tests use against it are blocking too.
#[derive(Debug)]
pub struct Kafka {
    // Field order = drop order: the process goes before its directory.
    process: ManagedProcess,
    bootstrap: String,
    port: u16,
    dir: TempDir,
}

impl Kafka {
    /// Formats a fresh log dir and starts the broker on free loopback ports;
    /// returns once it serves clients.
    ///
    /// # Errors
    ///
    /// [`Error::KafkaMissing`] when provision.sh has not run, and a start or
    /// readiness error with the broker's log tail otherwise.
    pub fn start() -> Result<Kafka> {
        let libs = kafka_dir().join("libs");
        if !libs
            .join(format!("kafka_2.13-{}.jar", crate::KAFKA_VERSION))
            .is_file()
        {
            return Err(Error::KafkaMissing { path: libs });
        }
        let mut last = None;
        // Ports are picked free but could be taken before the broker binds them.
        for _ in 0..3 {
            match Self::start_once(&libs) {
                Ok(k) => return Ok(k),
                Err(e) => last = Some(e),
            }
        }
        Err(last.unwrap_or_else(|| Error::Invalid("kafka did not start".into())))
    }

    fn start_once(libs: &Path) -> Result<Kafka> {
        let dir = TempDir::new("kafka")?;
        let port = free_port()?;
        let controller = free_port()?;
        let props = dir.path().join("server.properties");
        let data = dir.path().join("data");
        std::fs::write(
            &props,
            format!(
                "process.roles=broker,controller\n\
                 node.id=1\n\
                 controller.quorum.voters=1@127.0.0.1:{controller}\n\
                 listeners=PLAINTEXT://127.0.0.1:{port},CONTROLLER://127.0.0.1:{controller}\n\
                 advertised.listeners=PLAINTEXT://127.0.0.1:{port}\n\
                 controller.listener.names=CONTROLLER\n\
                 listener.security.protocol.map=PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT\n\
                 inter.broker.listener.name=PLAINTEXT\n\
                 log.dirs={}\n\
                 num.partitions=4\n\
                 auto.create.topics.enable=true\n\
                 offsets.topic.replication.factor=1\n\
                 offsets.topic.num.partitions=1\n\
                 transaction.state.log.replication.factor=1\n\
                 transaction.state.log.min.isr=1\n\
                 share.coordinator.state.topic.replication.factor=1\n\
                 group.initial.rebalance.delay.ms=0\n\
                 log.flush.interval.ms=1000000\n",
                data.display()
            ),
        )
        .ctx(|| format!("write {}", props.display()))?;
        let log4j = dir.path().join("log4j2.properties");
        std::fs::write(&log4j, LOG4J2).ctx(|| format!("write {}", log4j.display()))?;
        let classpath = classpath(libs)?;

        // kafka-storage format: the cluster id is any 16 bytes in URL-safe base64.
        let mut format = java(&classpath, &log4j);
        format
            .arg("kafka.tools.StorageTool")
            .arg("format")
            .arg("--cluster-id")
            .arg("c3F1YWxsLXRlc3RlbnYtaw")
            .arg("--config")
            .arg(&props)
            .arg("--ignore-formatted");
        let log = dir.path().join("format.log");
        let out = File::create(&log).ctx(|| format!("create log {}", log.display()))?;
        let err = out
            .try_clone()
            .ctx(|| format!("dup log {}", log.display()))?;
        format.stdin(Stdio::null()).stdout(out).stderr(err);
        let mut child = spawn(format).ctx(|| "start kafka-storage format".into())?;
        match wait_timeout(&mut child, START_TIMEOUT) {
            Some(status) if status.success() => {}
            Some(status) => {
                return Err(Error::Exited {
                    component: "kafka-storage format".into(),
                    status: status.to_string(),
                    log_tail: log_tail(&log, 30),
                });
            }
            None => {
                terminate(&mut child, Duration::from_secs(1));
                return Err(Error::NotReady {
                    component: "kafka-storage format".into(),
                    timeout: START_TIMEOUT,
                    detail: log_tail(&log, 30),
                });
            }
        }
        let deadline = Instant::now() + START_TIMEOUT;

        let mut cmd = java(&classpath, &log4j);
        cmd.arg("kafka.Kafka").arg(&props).current_dir(dir.path());
        let process = ManagedProcess::start("kafka", cmd, &dir.path().join("kafka.log"))?;
        let mut kafka = Kafka {
            process,
            bootstrap: format!("127.0.0.1:{port}"),
            port,
            dir,
        };
        kafka.wait_ready(deadline)?;
        Ok(kafka)
    }

    fn wait_ready(&mut self, deadline: Instant) -> Result<()> {
        let addr = SocketAddr::from(([127, 0, 0, 1], self.port));
        loop {
            self.process.check_alive()?;
            let log = std::fs::read_to_string(self.process.log_path()).unwrap_or_default();
            if log.contains(STARTED)
                && TcpStream::connect_timeout(&addr, Duration::from_secs(1)).is_ok()
            {
                return Ok(());
            }
            if Instant::now() >= deadline {
                return Err(Error::NotReady {
                    component: "kafka".into(),
                    timeout: START_TIMEOUT,
                    detail: format!("no '{STARTED}' yet; log:\n{}", self.process.log_tail(30)),
                });
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// `host:port` for clients' `bootstrap.servers`.
    pub fn bootstrap_servers(&self) -> &str {
        &self.bootstrap
    }

    /// The broker's process id (a test can stop it to simulate an outage).
    pub fn pid(&self) -> u32 {
        self.process.pid()
    }

    /// The broker's log file.
    pub fn log_path(&self) -> &Path {
        self.process.log_path()
    }

    /// The temporary directory (config, data, logs).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }
}

fn java(classpath: &str, log4j: &Path) -> Command {
    let java = std::env::var_os("JAVA_HOME")
        .map(|h| PathBuf::from(h).join("bin").join("java"))
        .filter(|j| j.is_file())
        .unwrap_or_else(|| PathBuf::from("java"));
    let mut cmd = Command::new(java);
    cmd.args(JVM_OPTS)
        .arg(format!("-Dlog4j2.configurationFile={}", log4j.display()))
        .arg("-cp")
        .arg(classpath);
    cmd
}

/// Every jar in `libs`, in a stable order.
fn classpath(libs: &Path) -> Result<String> {
    let mut jars: Vec<PathBuf> = std::fs::read_dir(libs)
        .ctx(|| format!("read {}", libs.display()))?
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "jar"))
        .collect();
    jars.sort();
    Ok(jars
        .iter()
        .map(|p| p.display().to_string())
        .collect::<Vec<_>>()
        .join(":"))
}
