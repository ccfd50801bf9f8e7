//! Lua filters (EnvoyExtensionPolicy `lua`) with the part of Envoy's stream API that real
//! scripts use: `envoy_on_request(handle)` / `envoy_on_response(handle)`,
//! `handle:headers()` with `get`, `add`, `replace`, `remove` (pseudo-headers `:path`,
//! `:authority`, `:method`, `:scheme`, `:status`), `handle:respond(headers, body)`,
//! `handle:logTrace/logDebug/logInfo/logWarn/logErr/logCritical`, and
//! `handle:streamInfo()` with `protocol()`, `requestedServerName()` and
//! `downstreamRemoteAddress()`.
//!
//! Sandbox: the `string`, `table`, `math` and `utf8` libraries only, and of the base library
//! neither `load`, `loadfile`, `dofile`, `collectgarbage`, `require` nor `string.dump`: no
//! file is read, no chunk is made at run time, and only text chunks load (Lua does not verify
//! binary chunks). `print` writes to the gateway's log. Memory is bounded by
//! [`MEMORY_BYTES_MAX`] (which also bounds `string.rep`), each call by [`INSTRUCTIONS_MAX`],
//! and the pattern functions (`find`, `match`, `gmatch`, `gsub`), which run in C where the
//! instruction count cannot stop them, refuse subjects over [`PATTERN_SUBJECT_BYTES_MAX`]. On
//! a multi-threaded runtime a script runs with `block_in_place`, so a slow one holds its own
//! thread, not a worker the proxy's other connections need.
//!
//! This is Lua 5.4, not LuaJIT as in Envoy: scripts written for both (as the corpus's is)
//! behave the same; LuaJIT's `bit`/`ffi` modules are not there, and the sandbox bounds can
//! only be enforced on the reference interpreter.

use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

pub use crate::limits::{INSTRUCTIONS_MAX, MEMORY_BYTES_MAX, PATTERN_SUBJECT_BYTES_MAX};
use http::header::{HeaderMap, HeaderName, HeaderValue};
use mlua::{
    Function, HookTriggers, Lua, LuaOptions, StdLib, Table, UserData, UserDataMethods, VmState,
};

const HOOK_EVERY: u32 = 10_000;

/// Base library functions a filter does not get: each reads files, makes code at run time
/// (binary chunks among it) or reaches into the collector.
const REMOVED_GLOBALS: &[&str] = &["load", "loadfile", "dofile", "collectgarbage", "require"];

/// Pattern-matching steps counted as one instruction (a step is a character comparison).
pub const PATTERN_STEPS_PER_INSTRUCTION: f64 = 10.0;

/// The worst case, in matching steps, of a Lua pattern with `q` quantifiers (`*`, `+`, `-`,
/// `?`) on a subject of `n` bytes: each quantifier can make the matcher try every length at
/// every position, so `n^(q+1)/(q+1)!` (a pattern without any is one pass, `n`).
pub fn pattern_steps(n: usize, q: usize) -> f64 {
    let n = n.max(1) as f64;
    let k = q.min(4) as i32 + 1;
    let fact: f64 = (1..=k).map(f64::from).product();
    n.powi(k) / fact
}

/// Runs before the script, in its state: the pattern functions with the subject bound, and
/// each call's worst case charged to the script's instruction budget before it runs (a
/// C function cannot be stopped once it runs: `("a"):rep(60000):find("a*b")` would take
/// seconds).
const PRELUDE: &str = r#"
do
  local max, err, type, charge = ...
  local byte = string.byte
  local function quantifiers(p)
    local q, i, n = 0, 1, #p
    while i <= n do
      local c = byte(p, i)
      if c == 37 then
        i = i + 2
      else
        if c == 42 or c == 43 or c == 45 or c == 63 then q = q + 1 end
        i = i + 1
      end
    end
    return q
  end
  local function bounded(f, name)
    return function(s, p, a, b, ...)
      if type(s) == "string" then
        if #s > max then
          err("string." .. name .. ": subject longer than " .. max .. " bytes", 2)
        end
        local q = 0
        if type(p) == "string" and not (name == "find" and b) then q = quantifiers(p) end
        local ok, why = charge(#s, q)
        if not ok then err("string." .. name .. ": " .. why, 2) end
      end
      return f(s, p, a, b, ...)
    end
  end
  for _, name in ipairs({"find", "match", "gmatch", "gsub"}) do
    string[name] = bounded(string[name], name)
  end
end
"#;

/// A loaded script.
#[derive(Debug)]
pub struct LuaFilter {
    /// `namespace/name` of the policy, for logs.
    pub name: String,
    /// The interpreter, or why the policy's scripts cannot run (then every request fails).
    lua: Result<Mutex<Lua>, String>,
    has_request: bool,
    has_response: bool,
    budget: std::sync::Arc<AtomicU64>,
}

/// What the script did to a request.
#[derive(Debug, Default)]
pub struct Outcome {
    /// `handle:respond(...)` was called: answer with this instead of forwarding.
    pub respond: Option<LocalReply>,
}

#[derive(Debug)]
pub struct LocalReply {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: String,
}

/// The request or response a script sees: headers plus pseudo-headers.
#[derive(Debug, Default)]
pub struct Message {
    pub headers: HeaderMap,
    /// `:method`, `:path`, `:authority`, `:scheme` on requests; `:status` on responses.
    pub pseudo: Vec<(&'static str, String)>,
    pub protocol: String,
    pub sni: Option<String>,
    pub remote: String,
}

impl Message {
    fn get(&self, name: &str) -> Option<String> {
        if name.starts_with(':') {
            return self
                .pseudo
                .iter()
                .find(|(k, _)| *k == name)
                .map(|(_, v)| v.clone());
        }
        self.headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string)
    }

    fn set_pseudo(&mut self, name: &str, value: String) -> bool {
        match self.pseudo.iter_mut().find(|(k, _)| *k == name) {
            Some(slot) => {
                slot.1 = value;
                true
            }
            None => false,
        }
    }
}

struct Handle<'a> {
    msg: &'a mut Message,
    reply: &'a Mutex<Option<LocalReply>>,
    script: &'a str,
}

impl UserData for Handle<'_> {
    fn add_methods<M: UserDataMethods<Self>>(methods: &mut M) {
        // `handle:headers()` returns the handle itself: the header methods are on it, so the
        // usual `handle:headers():get(...)` works without a second borrow of the message.
        methods.add_function("headers", |_, ud: mlua::AnyUserData| Ok(ud));
        methods.add_method_mut(
            "respond",
            |_, this, (headers, body): (Table, Option<String>)| {
                let mut status = 200;
                let mut out = Vec::new();
                for pair in headers.pairs::<String, String>() {
                    let (k, v) = pair?;
                    if k == ":status" {
                        status = v.parse().unwrap_or(200);
                    } else {
                        out.push((k, v));
                    }
                }
                if let Ok(mut r) = this.reply.lock() {
                    *r = Some(LocalReply {
                        status,
                        headers: out,
                        body: body.unwrap_or_default(),
                    });
                }
                Ok(())
            },
        );
        for (name, level) in [
            ("logTrace", 0),
            ("logDebug", 1),
            ("logInfo", 2),
            ("logWarn", 3),
            ("logErr", 4),
            ("logCritical", 4),
        ] {
            methods.add_method(name, move |_, this, msg: String| {
                match level {
                    0 | 1 => tracing::debug!(script = this.script, "{msg}"),
                    2 => tracing::info!(script = this.script, "{msg}"),
                    3 => tracing::warn!(script = this.script, "{msg}"),
                    _ => tracing::error!(script = this.script, "{msg}"),
                }
                Ok(())
            });
        }
        methods.add_method("streamInfo", |lua, this, ()| {
            let t = lua.create_table()?;
            t.set("protocol_", this.msg.protocol.clone())?;
            t.set("sni_", this.msg.sni.clone())?;
            t.set("remote_", this.msg.remote.clone())?;
            let proto = lua.create_function(|_, t: Table| t.get::<Option<String>>("protocol_"))?;
            let sni = lua.create_function(|_, t: Table| t.get::<Option<String>>("sni_"))?;
            let remote = lua.create_function(|_, t: Table| t.get::<Option<String>>("remote_"))?;
            t.set("protocol", proto)?;
            t.set("requestedServerName", sni)?;
            t.set("downstreamRemoteAddress", remote)?;
            Ok(t)
        });
        methods.add_method_mut("get", |_, this, name: String| {
            Ok(this.msg.get(&name.to_ascii_lowercase()))
        });
        methods.add_method_mut("add", |_, this, (name, value): (String, String)| {
            edit(this.msg, &name, Some(&value), true);
            Ok(())
        });
        methods.add_method_mut("replace", |_, this, (name, value): (String, String)| {
            edit(this.msg, &name, Some(&value), false);
            Ok(())
        });
        methods.add_method_mut("remove", |_, this, name: String| {
            edit(this.msg, &name, None, false);
            Ok(())
        });
    }
}

fn edit(msg: &mut Message, name: &str, value: Option<&str>, append: bool) {
    let name = name.to_ascii_lowercase();
    if name.starts_with(':') {
        if let Some(v) = value {
            msg.set_pseudo(&name, v.to_string());
        }
        return;
    }
    let Ok(n) = HeaderName::from_bytes(name.as_bytes()) else {
        return;
    };
    match value {
        None => {
            msg.headers.remove(&n);
        }
        Some(v) => {
            let Ok(v) = HeaderValue::from_str(v) else {
                return;
            };
            if append {
                msg.headers.append(n, v);
            } else {
                msg.headers.insert(n, v);
            }
        }
    }
}

impl LuaFilter {
    /// Loads a script into a fresh sandbox. Errors say what is wrong, with the line.
    pub fn load(name: &str, source: &str) -> Result<LuaFilter, String> {
        let lua = Lua::new_with(
            StdLib::STRING | StdLib::TABLE | StdLib::MATH | StdLib::UTF8,
            LuaOptions::default(),
        )
        .map_err(|e| e.to_string())?;
        lua.set_memory_limit(MEMORY_BYTES_MAX)
            .map_err(|e| e.to_string())?;
        let budget = std::sync::Arc::new(AtomicU64::new(INSTRUCTIONS_MAX));
        let b = budget.clone();
        lua.set_hook(
            HookTriggers::new().every_nth_instruction(HOOK_EVERY),
            move |_, _| {
                let left = b.fetch_sub(u64::from(HOOK_EVERY), Ordering::Relaxed);
                if left <= u64::from(HOOK_EVERY) {
                    return Err(mlua::Error::RuntimeError(format!(
                        "script ran more than {INSTRUCTIONS_MAX} instructions"
                    )));
                }
                Ok(VmState::Continue)
            },
        )
        .map_err(|e| e.to_string())?;
        sandbox(&lua, name, budget.clone()).map_err(|e| e.to_string())?;
        lua.load(source)
            .set_name(name)
            .set_mode(mlua::chunk::ChunkMode::Text)
            .exec()
            .map_err(|e| first_line(&e.to_string()))?;
        let g = lua.globals();
        let has_request = g
            .get::<Option<Function>>("envoy_on_request")
            .map_err(|e| e.to_string())?
            .is_some();
        let has_response = g
            .get::<Option<Function>>("envoy_on_response")
            .map_err(|e| e.to_string())?
            .is_some();
        if !has_request && !has_response {
            return Err("the script defines neither envoy_on_request nor envoy_on_response".into());
        }
        Ok(LuaFilter {
            name: name.to_string(),
            lua: Ok(Mutex::new(lua)),
            has_request,
            has_response,
            budget,
        })
    }

    /// A filter standing for a policy whose scripts cannot run (one does not load, or the
    /// policy is not accepted): every request it sees fails with `why` (a 500), so that a
    /// route is never served without the filters its policy names.
    pub fn refusing(name: &str, why: String) -> LuaFilter {
        LuaFilter {
            name: name.to_string(),
            lua: Err(why),
            has_request: true,
            has_response: false,
            budget: std::sync::Arc::default(),
        }
    }

    pub fn has_request(&self) -> bool {
        self.has_request
    }

    pub fn has_response(&self) -> bool {
        self.has_response
    }

    /// Runs `envoy_on_request` or `envoy_on_response` on a message.
    pub fn run(&self, response: bool, msg: &mut Message) -> Result<Outcome, String> {
        let multi_thread = tokio::runtime::Handle::try_current()
            .is_ok_and(|h| h.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread);
        if multi_thread {
            tokio::task::block_in_place(|| self.run_here(response, msg))
        } else {
            self.run_here(response, msg)
        }
    }

    fn run_here(&self, response: bool, msg: &mut Message) -> Result<Outcome, String> {
        let func_name = if response {
            "envoy_on_response"
        } else {
            "envoy_on_request"
        };
        let lua = self
            .lua
            .as_ref()
            .map_err(|why| format!("the policy's scripts cannot run: {why}"))?
            .lock()
            .map_err(|_| "script state poisoned by an earlier panic".to_string())?;
        let f: Function = match lua
            .globals()
            .get::<Option<Function>>(func_name)
            .map_err(|e| e.to_string())?
        {
            Some(f) => f,
            None => return Ok(Outcome::default()),
        };
        self.budget.store(INSTRUCTIONS_MAX, Ordering::Relaxed);
        let reply = Mutex::new(None);
        let result = lua.scope(|scope| {
            let handle = scope.create_userdata(Handle {
                msg: &mut *msg,
                reply: &reply,
                script: &self.name,
            })?;
            f.call::<()>(&handle)
        });
        result.map_err(|e| first_line(&e.to_string()))?;
        Ok(Outcome {
            respond: reply.into_inner().unwrap_or(None),
        })
    }
}

/// Closes the sandbox before the script runs: see the module documentation.
fn sandbox(lua: &Lua, name: &str, budget: std::sync::Arc<AtomicU64>) -> mlua::Result<()> {
    let g = lua.globals();
    for f in REMOVED_GLOBALS {
        g.raw_set(*f, mlua::Nil)?;
    }
    let string: Table = g.get("string")?;
    string.raw_set("dump", mlua::Nil)?;
    let script = name.to_string();
    let print = lua.create_function(move |_, args: mlua::MultiValue| {
        let line: Vec<String> = args
            .iter()
            .map(|v| v.to_string().unwrap_or_else(|_| "?".into()))
            .collect();
        tracing::info!(script = %script, "{}", line.join("\t"));
        Ok(())
    })?;
    g.raw_set("print", print)?;
    let error: Function = g.get("error")?;
    let type_: Function = g.get("type")?;
    // Takes a pattern call's worst case from the budget, or says why it may not run.
    let charge = lua.create_function(move |_, (n, q): (usize, usize)| {
        let cost = (pattern_steps(n, q) / PATTERN_STEPS_PER_INSTRUCTION).ceil();
        let left = budget.load(Ordering::Relaxed);
        if cost >= left as f64 {
            return Ok((
                false,
                Some(format!(
                    "a pattern with {q} quantifiers on {n} bytes could run longer than \
                     the script's budget of {INSTRUCTIONS_MAX} instructions"
                )),
            ));
        }
        budget.fetch_sub(cost as u64, Ordering::Relaxed);
        Ok((true, None))
    })?;
    lua.load(PRELUDE)
        .set_name("sandbox")
        .set_mode(mlua::chunk::ChunkMode::Text)
        .call::<()>((PATTERN_SUBJECT_BYTES_MAX, error, type_, charge))
}

fn first_line(s: &str) -> String {
    s.lines().next().unwrap_or(s).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn binary_chunks_do_not_load() {
        let lua = Lua::new();
        let chunk = lua
            .load("function envoy_on_request(h) end")
            .into_function()
            .expect("compiles")
            .dump(false);
        assert!(chunk.starts_with(b"\x1bLua"));
        let e = LuaFilter::load("t/binary", &String::from_utf8_lossy(&chunk))
            .expect_err("a binary chunk is refused");
        assert!(e.contains("binary"), "{e}");
    }
}
