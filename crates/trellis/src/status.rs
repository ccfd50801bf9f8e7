//! `trellis status`: reads `/status` from a running trellis's admin endpoint (`up`, `gateway`
//! or `dns`) and prints it as a table, JSON or YAML. Exit code 0 when ready, 1 when the
//! process says it is not ready or a component has an error, 2 when it cannot be reached.

use std::process::ExitCode;

use crate::check::Output;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// The admin address of the process (`trellis up`'s default is 127.0.0.1:9901).
    #[arg(long, default_value = "127.0.0.1:9901", env = "TRELLIS_ADMIN")]
    pub admin: String,
    #[arg(short, long, value_enum, default_value = "table")]
    pub output: Output,
}

/// One row per component: name, started, generation, last error.
fn rows(doc: &serde_json::Value) -> Vec<[String; 4]> {
    let cell = |v: &serde_json::Value| match v {
        serde_json::Value::Null => "-".to_string(),
        serde_json::Value::String(s) => s.clone(),
        other => other.to_string(),
    };
    let row = |name: String, c: &serde_json::Value| {
        [
            name,
            cell(&c["started"]),
            cell(&c["generation"]),
            cell(&c["lastError"]),
        ]
    };
    let mut out = Vec::new();
    let components = &doc["components"];
    if let Some(gws) = components["gateways"].as_object() {
        for (name, g) in gws {
            out.push(row(format!("gateway {name}"), g));
        }
    }
    for name in ["dns", "observe"] {
        if !components[name].is_null() {
            out.push(row(name.to_string(), &components[name]));
        }
    }
    out
}

fn table(doc: &serde_json::Value, rows: Vec<[String; 4]>) -> String {
    let mut lines = vec![[
        "COMPONENT".to_string(),
        "STARTED".to_string(),
        "GENERATION".to_string(),
        "LAST ERROR".to_string(),
    ]];
    let empty = rows.is_empty();
    lines.extend(rows);
    let widths: Vec<usize> = (0..3)
        .map(|i| lines.iter().map(|l| l[i].len()).max().unwrap_or(0))
        .collect();
    let mut out = format!(
        "ready: {}\n",
        doc.get("ready")
            .map(|r| r.to_string())
            .unwrap_or("-".into())
    );
    for l in &lines {
        out.push_str(&format!(
            "{:w0$}  {:w1$}  {:w2$}  {}\n",
            l[0],
            l[1],
            l[2],
            l[3],
            w0 = widths[0],
            w1 = widths[1],
            w2 = widths[2]
        ));
    }
    if empty {
        // A single gateway's or DNS's document: no components, print it whole.
        out.push_str(&format!("{doc:#}\n"));
    }
    out
}

pub fn run(args: &Args) -> anyhow::Result<ExitCode> {
    let url = format!("http://{}/status", args.admin);
    let fetched = crate::gateway::runtime()?.block_on(async {
        let req = http::Request::get(&url).body(bytes::Bytes::new())?;
        anyhow::Ok(httpkit::Client::default().send(req).await?)
    });
    let resp = match fetched {
        Ok(r) if r.status == 200 => r,
        Ok(r) => {
            eprintln!("{url}: HTTP {}", r.status);
            return Ok(ExitCode::from(2));
        }
        Err(e) => {
            eprintln!(
                "cannot read {url}: {e} (is trellis running with its admin endpoint there? see --admin)"
            );
            return Ok(ExitCode::from(2));
        }
    };
    let doc: serde_json::Value = serde_json::from_slice(&resp.body)?;
    let rows = rows(&doc);
    let unhealthy =
        doc["ready"] == serde_json::Value::Bool(false) || rows.iter().any(|r| r[3] != "-");
    match args.output {
        Output::Json => println!("{doc:#}"),
        Output::Yaml => print!("{}", serde_saphyr::to_string(&doc)?),
        Output::Table => print!("{}", table(&doc, rows)),
    }
    Ok(if unhealthy {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    })
}
