//! TLS to PostgreSQL, against a real cluster started with `ssl=on` and a certificate this test
//! makes: each `sslmode` connects (or refuses) as docs/store.md says, and a store opens over
//! `verify-full`.
//!
//! The cluster is the test's own (Debian's PostgreSQL binaries, `initdb` in a temporary
//! directory, listening on 127.0.0.1 only); without the binaries the test prints `skipped:
//! <reason>`, and fails under `CI=true`.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::Command;

use conclave_core::model::NewAgent;
use conclave_core::store::pg_tls::PgTarget;
use conclave_core::store::testing::record_skip;
use conclave_core::{Store, StoreConfig};

/// A PostgreSQL cluster with TLS on, stopped and removed when dropped.
struct TlsCluster {
    dir: PathBuf,
    bin: PathBuf,
    port: u16,
}

impl Drop for TlsCluster {
    fn drop(&mut self) {
        let _ = as_owner(&self.bin.join("pg_ctl"))
            .args(["-D", &self.data(), "-m", "immediate", "-w", "stop"])
            .output();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

impl TlsCluster {
    fn data(&self) -> String {
        self.dir.join("data").to_string_lossy().into_owned()
    }

    fn url(&self, host: &str, query: &str) -> String {
        format!("postgres://postgres@{host}:{}/postgres?{query}", self.port)
    }
}

fn is_root() -> bool {
    effective_uid() == 0
}

/// The effective user id, from /proc (no libc dependency for one number).
fn effective_uid() -> u32 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|status| {
            status
                .lines()
                .find(|line| line.starts_with("Uid:"))
                .and_then(|line| line.split_whitespace().nth(2))
                .and_then(|uid| uid.parse().ok())
        })
        .unwrap_or(u32::MAX)
}

/// PostgreSQL refuses to run as root: root runs it as the `postgres` user.
fn as_owner(program: &Path) -> Command {
    if is_root() {
        let mut command = Command::new("runuser");
        command.args(["-u", "postgres", "--"]).arg(program);
        command
    } else {
        Command::new(program)
    }
}

fn postgres_bin() -> Option<PathBuf> {
    let mut found: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .ok()?
        .filter_map(|entry| entry.ok().map(|entry| entry.path().join("bin")))
        .filter(|bin| bin.join("initdb").exists())
        .collect();
    found.sort();
    found.pop()
}

fn run(mut command: Command, what: &str) {
    let output = command
        .output()
        .unwrap_or_else(|error| panic!("{what}: {error}"));
    assert!(
        output.status.success(),
        "{what} failed: {}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}

/// Writes a CA and a server certificate it signed for `localhost` only (not `127.0.0.1`, so
/// that `verify-full` by address fails on the name while `verify-ca` passes), plus a second,
/// unrelated CA.
fn write_certificates(dir: &Path) {
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).expect("ca params");
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "conclave test CA");
    let ca =
        rcgen::CertifiedIssuer::self_signed(ca_params, rcgen::KeyPair::generate().expect("ca key"))
            .expect("ca");
    let key = rcgen::KeyPair::generate().expect("server key");
    let cert = rcgen::CertificateParams::new(vec!["localhost".to_string()])
        .expect("server params")
        .signed_by(&key, &ca)
        .expect("sign");
    let mut other_params =
        rcgen::CertificateParams::new(Vec::<String>::new()).expect("other ca params");
    other_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    let other = rcgen::CertifiedIssuer::self_signed(
        other_params,
        rcgen::KeyPair::generate().expect("other key"),
    )
    .expect("other ca");
    std::fs::write(dir.join("ca.pem"), ca.pem()).expect("ca.pem");
    std::fs::write(dir.join("other-ca.pem"), other.pem()).expect("other-ca.pem");
    std::fs::write(dir.join("server.crt"), cert.pem()).expect("server.crt");
    std::fs::write(dir.join("server.key"), key.serialize_pem()).expect("server.key");
}

/// Starts the cluster, or answers why it cannot.
fn start_cluster() -> Result<TlsCluster, String> {
    let bin = postgres_bin().ok_or("no PostgreSQL server binaries in /usr/lib/postgresql")?;
    let port = TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .map_err(|error| format!("no free port: {error}"))?
        .port();
    let dir = std::env::temp_dir().join(format!("conclave-pg-tls-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(dir.join("sock")).map_err(|error| error.to_string())?;
    write_certificates(&dir);
    let cluster = TlsCluster { dir, bin, port };
    if is_root() {
        run(
            {
                let mut chown = Command::new("chown");
                chown.args(["-R", "postgres:"]).arg(&cluster.dir);
                chown
            },
            "chown",
        );
    }
    let mut permissions = Command::new("chmod");
    permissions.arg("0600").arg(cluster.dir.join("server.key"));
    run(permissions, "chmod");
    let mut initdb = as_owner(&cluster.bin.join("initdb"));
    initdb.args([
        "-D",
        &cluster.data(),
        "-U",
        "postgres",
        "--auth=trust",
        "-E",
        "UTF8",
    ]);
    run(initdb, "initdb");
    let options = format!(
        "-c listen_addresses=127.0.0.1 -p {port} -k {sock} -c fsync=off -c ssl=on \
         -c ssl_cert_file={dir}/server.crt -c ssl_key_file={dir}/server.key",
        sock = cluster.dir.join("sock").display(),
        dir = cluster.dir.display(),
    );
    let mut start = as_owner(&cluster.bin.join("pg_ctl"));
    start
        .args(["-D", &cluster.data(), "-l"])
        .arg(cluster.dir.join("server.log"))
        .args(["-w", "-t", "60", "-o", &options, "start"]);
    run(start, "pg_ctl start");
    Ok(cluster)
}

/// Whether the connection `url` opens is encrypted, or the error connecting gave.
fn connect_and_ask(url: &str) -> Result<bool, String> {
    let target = PgTarget::parse(url)?;
    let mut client = target
        .connect()
        .map_err(|error| conclave_core::store::pg_tls::describe(&error))?;
    let row = client
        .query_one(
            "SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()",
            &[],
        )
        .map_err(|error| error.to_string())?;
    Ok(row.get(0))
}

#[test]
fn each_sslmode_connects_as_documented_to_a_cluster_with_tls() {
    let cluster = match start_cluster() {
        Ok(cluster) => cluster,
        Err(reason) if std::env::var("CI").is_ok_and(|ci| ci == "true") => {
            panic!("a PostgreSQL cluster with TLS is required under CI=true: {reason}")
        }
        Err(reason) => {
            record_skip(&reason);
            return;
        }
    };
    let ca = cluster.dir.join("ca.pem").display().to_string();
    let other_ca = cluster.dir.join("other-ca.pem").display().to_string();

    assert_eq!(
        connect_and_ask(&cluster.url("127.0.0.1", "sslmode=disable")),
        Ok(false)
    );
    assert_eq!(
        connect_and_ask(&cluster.url("127.0.0.1", "sslmode=prefer")),
        Ok(true),
        "prefer takes TLS when the server offers it"
    );
    assert_eq!(
        connect_and_ask(&cluster.url("127.0.0.1", "")),
        Ok(true),
        "no sslmode means prefer"
    );
    assert_eq!(
        connect_and_ask(&cluster.url("127.0.0.1", "sslmode=require")),
        Ok(true)
    );
    assert_eq!(
        connect_and_ask(&cluster.url(
            "localhost",
            &format!("sslmode=verify-full&sslrootcert={ca}")
        )),
        Ok(true)
    );
    assert_eq!(
        connect_and_ask(&cluster.url("127.0.0.1", &format!("sslmode=verify-ca&sslrootcert={ca}"))),
        Ok(true),
        "verify-ca does not compare the name"
    );

    let wrong_name = connect_and_ask(&cluster.url(
        "127.0.0.1",
        &format!("sslmode=verify-full&sslrootcert={ca}"),
    ))
    .expect_err("the certificate names localhost, not 127.0.0.1");
    assert!(wrong_name.contains("not valid for name"), "{wrong_name}");
    let wrong_ca = connect_and_ask(&cluster.url(
        "localhost",
        &format!("sslmode=verify-full&sslrootcert={other_ca}"),
    ))
    .expect_err("another CA signed nothing here");
    assert!(wrong_ca.contains("UnknownIssuer"), "{wrong_ca}");
    let wrong_ca_require = connect_and_ask(&cluster.url(
        "127.0.0.1",
        &format!("sslmode=require&sslrootcert={other_ca}"),
    ))
    .expect_err("require with sslrootcert checks the chain, as libpq does");
    assert!(
        wrong_ca_require.contains("UnknownIssuer"),
        "{wrong_ca_require}"
    );

    // A whole store over verify-full: schema, a write and a read.
    let store = Store::open_postgres(
        &cluster.url(
            "localhost",
            &format!("sslmode=verify-full&sslrootcert={ca}"),
        ),
        StoreConfig::default(),
    )
    .expect("a store over verify-full");
    store
        .write(|tx| {
            tx.register_agent(
                "admin",
                NewAgent {
                    name: "over-tls".into(),
                    ..Default::default()
                },
            )
        })
        .expect("a write over TLS");
    let agent = store
        .read(|reader| reader.agent("over-tls"))
        .expect("a read over TLS");
    assert_eq!(agent.name, "over-tls");
}
