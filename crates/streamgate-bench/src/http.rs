//! 5. HTTP proxying: requests/s and latency vs nginx and bare Pingora, with wrk.

use crate::{baselines::*, measure::*, report::*, Cli};
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;
use streamgate_testkit::{free_port, GatewayProcess};

pub(crate) async fn http_proxying(
    cli: &Cli,
    gateway_bin: &Path,
    report: &mut Report,
) -> Result<(), Box<dyn std::error::Error>> {
    let dir = std::env::temp_dir().join(format!("streamgate-bench-{}", std::process::id()));
    std::fs::create_dir_all(dir.join("www"))?;
    std::fs::write(dir.join("www/1k"), vec![b'k'; 1024])?;
    std::fs::write(dir.join("www/1m"), vec![b'm'; 1 << 20])?;
    let origin_port = free_port();
    let nginx_port = free_port();
    let origin = nginx(
        &dir,
        "origin",
        &format!(
            "server {{ listen 127.0.0.1:{origin_port}; root {}/www; }}",
            dir.display()
        ),
    )?;
    let proxy = nginx(
        &dir,
        "proxy",
        &format!(
            "upstream origin {{ server 127.0.0.1:{origin_port}; keepalive 64; }}\n  server {{ listen 127.0.0.1:{nginx_port}; location / {{ proxy_pass http://origin; proxy_http_version 1.1; proxy_set_header Connection \"\"; proxy_buffering on; }} }}"
        ),
    )?;
    let spawn_bare = |duties: bool| -> Result<(SocketAddr, Running), Box<dyn std::error::Error>> {
        let addr = SocketAddr::from(([127, 0, 0, 1], free_port()));
        let mut cmd = Command::new(std::env::current_exe()?);
        cmd.args([
            "bare-pingora",
            "--listen",
            &addr.to_string(),
            "--node",
            &format!("127.0.0.1:{origin_port}"),
        ]);
        if duties {
            cmd.arg("--duties");
        }
        let child = cmd.stdout(Stdio::null()).stderr(Stdio::null()).spawn()?;
        Ok((addr, Running { child }))
    };
    let (bare_addr, bare) = spawn_bare(false)?;
    let (duties_addr, duties) = spawn_bare(true)?;
    let gw_addr = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let config = format!(
        "[server]\nlisten = [\"{gw_addr}\"]\nthreads = 1\n\n[[upstreams]]\nid = \"origin\"\nnodes = {{ \"127.0.0.1:{origin_port}\" = 1 }}\n\n[[routes]]\nid = \"all\"\nuri = \"/*\"\nupstream_id = \"origin\"\n"
    );
    let gw = GatewayProcess::start_with_env(
        gateway_bin,
        &config,
        gw_addr,
        &[("STREAMGATE_LOG", "warn")],
    )
    .await;
    streamgate_testkit::wait_for_port(
        SocketAddr::from(([127, 0, 0, 1], nginx_port)),
        Duration::from_secs(5),
    )
    .await?;
    streamgate_testkit::wait_for_port(bare_addr, Duration::from_secs(5)).await?;
    streamgate_testkit::wait_for_port(duties_addr, Duration::from_secs(5)).await?;
    // Proxies on core 0; origin and wrk on core 1.
    pin(gw.pid(), "0");
    pin(bare.child.id(), "0");
    pin(duties.child.id(), "0");
    pin(proxy.child.id(), "0");
    pin(origin.child.id(), "1");
    let seconds = ((5.0 * cli.scale) as u64).max(2);
    for file in ["1k", "1m"] {
        let (mut g, mut n, mut b, mut d) = (
            (vec![], vec![], vec![]),
            (vec![], vec![], vec![]),
            (vec![], vec![], vec![]),
            (vec![], vec![], vec![]),
        );
        for rep in 0..cli.reps {
            progress(&format!("5: {file}, repetition {}", rep + 1));
            let (r, p50, p99) = wrk(&format!("http://{gw_addr}/{file}"), seconds)?;
            g.0.push(r);
            g.1.push(p50);
            g.2.push(p99);
            let (r, p50, p99) = wrk(&format!("http://127.0.0.1:{nginx_port}/{file}"), seconds)?;
            n.0.push(r);
            n.1.push(p50);
            n.2.push(p99);
            let (r, p50, p99) = wrk(&format!("http://{bare_addr}/{file}"), seconds)?;
            b.0.push(r);
            b.1.push(p50);
            b.2.push(p99);
            let (r, p50, p99) = wrk(&format!("http://{duties_addr}/{file}"), seconds)?;
            d.0.push(r);
            d.1.push(p50);
            d.2.push(p99);
        }
        let name = format!("5. HTTP {file} responses, 50 conn.");
        for (baseline, base) in [
            ("nginx", &n),
            ("bare Pingora", &b),
            ("bare Pingora + duties", &d),
        ] {
            let (x, y) = (stat(&g.0), stat(&base.0));
            report.row(
                &name,
                &format!("requests/s (vs {baseline})"),
                fmt(x, 0),
                fmt(y, 0),
                format!("{:.0} %", x.median / y.median * 100.0),
            );
            let (x, y) = (stat(&g.1), stat(&base.1));
            report.row(
                &name,
                &format!("p50 ms (vs {baseline})"),
                fmt(x, 2),
                fmt(y, 2),
                format!("{:.2}×", x.median / y.median),
            );
            let (x, y) = (stat(&g.2), stat(&base.2));
            report.row(
                &name,
                &format!("p99 ms (vs {baseline})"),
                fmt(x, 2),
                fmt(y, 2),
                format!("{:.2}×", x.median / y.median),
            );
        }
    }
    drop(bare);
    drop(duties);
    drop(proxy);
    drop(origin);
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}
