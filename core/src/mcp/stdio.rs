//! stdio MCP servers: one child process per configured server, shared by
//! every caller on every shard, supervised by a thread of its own.
//!
//! Shards never touch the pipes. A call goes to the supervisor over a
//! crossbeam channel, with a [`WakingSender`] for what comes back; the
//! supervisor gives it an id of its own (callers' ids collide: they come
//! from many clients), rewrites its progress token the same way, and maps
//! both back on the replies. A child that exits fails the calls it held
//! (never a hang) and is started again with backoff; calls made while it
//! starts wait for its handshake. Stopping closes its stdin, then sends
//! SIGTERM, then SIGKILL. Its stderr goes to the log.

use crate::config::mcp::McpStdio;
use crate::runtime::{waking_channel, WakingReceiver, WakingSender};
use crossbeam::channel::{self, Receiver, RecvTimeoutError, Sender};
use serde_json::{json, Map, Value};
use shardgate_proto::mcp::{self as wire, code, RpcError};
use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::time::{Duration, Instant};

/// A line longer than this ends the child: the stream cannot be resynced.
const MAX_LINE: usize = 16 << 20;
/// How long a starting child has to answer the handshake.
const HANDSHAKE_WAIT: Duration = Duration::from_secs(20);
/// Calls that wait while the child starts, at most.
const MAX_WAITING: usize = 4096;
const BACKOFF_MIN: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(5);
/// How long a stopping child gets after stdin closes, and after SIGTERM.
const STOP_GRACE: Duration = Duration::from_secs(2);

/// What a call gets back, in order: notifications for it, then its
/// response (with the caller's id), or a failure.
#[derive(Debug)]
pub enum Reply {
    Message(Value),
    Failed(RpcError),
}

enum Cmd {
    Call {
        /// The message without its id (the supervisor sets its own).
        msg: Map<String, Value>,
        caller_id: Value,
        reply: WakingSender<Reply>,
        ticket: u64,
    },
    /// The caller went away: tell the child, forget the call.
    Cancel {
        ticket: u64,
    },
    Stop,
}

/// The shards' handle on one stdio server (cheap to clone).
#[derive(Clone)]
pub struct StdioServer {
    tx: Sender<Cmd>,
}

impl StdioServer {
    /// Starts the supervisor (which starts the child).
    pub fn start(
        name: &str,
        cfg: &McpStdio,
    ) -> std::io::Result<(Self, std::thread::JoinHandle<()>)> {
        let (tx, rx) = channel::unbounded();
        let name = name.to_owned();
        let cfg = cfg.clone();
        let join = std::thread::Builder::new()
            .name(format!("mcp-{name}"))
            .spawn(move || Supervisor::new(name, cfg, rx).run())?;
        Ok((StdioServer { tx }, join))
    }

    /// Sends `msg` (a request; its id is replaced) and returns where its
    /// replies arrive. `ticket` names the call for [`StdioServer::cancel`];
    /// unique per process.
    pub fn call(
        &self,
        msg: Map<String, Value>,
        caller_id: Value,
        ticket: u64,
    ) -> WakingReceiver<Reply> {
        let (reply, rx) = waking_channel();
        let cmd = Cmd::Call {
            msg,
            caller_id,
            reply,
            ticket,
        };
        if let Err(channel::SendError(Cmd::Call { reply, .. })) = self.tx.send(cmd) {
            let _ = reply.send(Reply::Failed(RpcError::new(
                code::CONNECTION_CLOSED,
                "the server is stopping",
            )));
        }
        rx
    }

    pub fn cancel(&self, ticket: u64) {
        let _ = self.tx.send(Cmd::Cancel { ticket });
    }

    /// Asks the supervisor to stop its child (stdin closed, SIGTERM,
    /// SIGKILL) and end.
    pub fn stop(&self) {
        let _ = self.tx.send(Cmd::Stop);
    }
}

struct Pending {
    caller_id: Value,
    /// The caller's progress token, where the gateway replaced it.
    progress: Option<Value>,
    reply: WakingSender<Reply>,
    ticket: u64,
}

struct Running {
    child: Child,
    stdin: ChildStdin,
    lines: Receiver<Option<Value>>,
    /// The version agreed with the child; modern requests carry `_meta`.
    modern: bool,
    started: Instant,
}

struct Supervisor {
    name: String,
    cfg: McpStdio,
    rx: Receiver<Cmd>,
    next_id: u64,
    pending: HashMap<u64, Pending>,
    waiting: Vec<Cmd>,
    backoff: Duration,
}

impl Supervisor {
    fn new(name: String, cfg: McpStdio, rx: Receiver<Cmd>) -> Self {
        Supervisor {
            name,
            cfg,
            rx,
            next_id: 1,
            pending: HashMap::new(),
            waiting: Vec::new(),
            backoff: BACKOFF_MIN,
        }
    }

    fn run(mut self) {
        loop {
            let mut running = match self.spawn_and_handshake() {
                Ok(r) => r,
                Err(e) => {
                    log::warn!(
                        "mcp server `{}`: could not start: {e}; next try in {:?}",
                        self.name,
                        self.backoff
                    );
                    self.fail_waiting(&format!("the server could not start: {e}"));
                    if self.sleep_taking_commands(self.backoff) {
                        return;
                    }
                    self.backoff = (self.backoff * 2).min(BACKOFF_MAX);
                    continue;
                }
            };
            log::info!(
                "mcp server `{}`: started (pid {})",
                self.name,
                running.child.id()
            );
            for cmd in std::mem::take(&mut self.waiting) {
                if let Some(stop) = self.command(&mut running, cmd) {
                    return self.stop(running, stop);
                }
            }
            let stopped = self.serve(&mut running);
            if stopped {
                return self.stop(running, ());
            }
            let status = running.child.wait().ok();
            log::warn!(
                "mcp server `{}`: exited ({}); restarting",
                self.name,
                status.map_or_else(|| "unknown status".into(), |s| s.to_string())
            );
            self.fail_pending("the server exited");
            if running.started.elapsed() > Duration::from_secs(30) {
                self.backoff = BACKOFF_MIN;
            }
            if self.sleep_taking_commands(self.backoff) {
                return;
            }
            self.backoff = (self.backoff * 2).min(BACKOFF_MAX);
        }
    }

    /// Waits `d`, queueing calls for the next child. True when told to stop.
    fn sleep_taking_commands(&mut self, d: Duration) -> bool {
        let until = Instant::now() + d;
        loop {
            let left = until.saturating_duration_since(Instant::now());
            match self.rx.recv_timeout(left) {
                Ok(Cmd::Stop) | Err(RecvTimeoutError::Disconnected) => {
                    self.fail_waiting("the server is stopping");
                    return true;
                }
                Ok(cmd) => self.wait_for_child(cmd),
                Err(RecvTimeoutError::Timeout) => return false,
            }
        }
    }

    fn wait_for_child(&mut self, cmd: Cmd) {
        match cmd {
            Cmd::Call { reply, .. } if self.waiting.len() >= MAX_WAITING => {
                let _ = reply.send(Reply::Failed(RpcError::new(
                    code::CONNECTION_CLOSED,
                    "the server is restarting",
                )));
            }
            Cmd::Cancel { ticket } => self
                .waiting
                .retain(|c| !matches!(c, Cmd::Call { ticket: t, .. } if *t == ticket)),
            cmd => self.waiting.push(cmd),
        }
    }

    /// Serves until the child exits (false) or a stop (true).
    fn serve(&mut self, r: &mut Running) -> bool {
        loop {
            channel::select! {
                recv(self.rx) -> cmd => match cmd {
                    Ok(cmd) => if self.command(r, cmd).is_some() { return true },
                    Err(_) => return true,
                },
                recv(r.lines) -> line => match line {
                    Ok(Some(msg)) => self.on_child_message(r, msg),
                    Ok(None) | Err(_) => return false,
                },
            }
        }
    }

    /// Handles one command; `Some(())` means stop.
    fn command(&mut self, r: &mut Running, cmd: Cmd) -> Option<()> {
        match cmd {
            Cmd::Stop => return Some(()),
            Cmd::Cancel { ticket } => {
                let id = self
                    .pending
                    .iter()
                    .find_map(|(id, p)| (p.ticket == ticket).then_some(*id));
                if let Some(id) = id {
                    self.pending.remove(&id);
                    let note = json!({"jsonrpc":"2.0","method":"notifications/cancelled",
                        "params":{"requestId": id, "reason": "the client went away"}});
                    let _ = write_line(&mut r.stdin, &note);
                }
            }
            Cmd::Call {
                mut msg,
                caller_id,
                reply,
                ticket,
            } => {
                let id = self.next_id;
                self.next_id += 1;
                let params = msg
                    .entry("params")
                    .or_insert_with(|| Value::Object(Map::new()));
                let progress = params
                    .get_mut("_meta")
                    .and_then(Value::as_object_mut)
                    .and_then(|m| m.get_mut("progressToken"))
                    .map(|t| std::mem::replace(t, id.into()));
                if r.modern {
                    set_modern_meta(params);
                } else if let Some(m) = params.get_mut("_meta").and_then(Value::as_object_mut) {
                    strip_modern_meta(m);
                }
                msg.insert("jsonrpc".into(), "2.0".into());
                msg.insert("id".into(), id.into());
                if let Err(e) = write_line(&mut r.stdin, &Value::Object(msg)) {
                    let _ = reply.send(Reply::Failed(RpcError::new(
                        code::CONNECTION_CLOSED,
                        format!("cannot write to the server: {e}"),
                    )));
                    return None;
                }
                self.pending.insert(
                    id,
                    Pending {
                        caller_id,
                        progress,
                        reply,
                        ticket,
                    },
                );
            }
        }
        None
    }

    fn on_child_message(&mut self, r: &mut Running, mut msg: Value) {
        let method = msg.get("method").and_then(Value::as_str).map(str::to_owned);
        let id = msg.get("id").cloned();
        match (method, id) {
            // A response to one of our calls.
            (None, Some(id)) => {
                let Some(p) = id.as_u64().and_then(|i| self.pending.remove(&i)) else {
                    return;
                };
                msg["id"] = p.caller_id;
                let _ = p.reply.send(Reply::Message(msg));
            }
            (Some(m), None) if m == "notifications/progress" => {
                let token = msg.pointer("/params/progressToken").and_then(Value::as_u64);
                let Some(p) = token.and_then(|t| self.pending.get(&t)) else {
                    return;
                };
                if let Some(orig) = &p.progress {
                    msg["params"]["progressToken"] = orig.clone();
                    let _ = p.reply.send(Reply::Message(msg));
                }
            }
            (Some(m), None) => log::debug!("mcp server `{}`: notification {m}", self.name),
            // The gateway offers the child no client capabilities
            // (sampling, elicitation, roots), so it has nothing to ask.
            (Some(m), Some(id)) => {
                let err = RpcError::new(code::METHOD_NOT_FOUND, format!("`{m}` is not offered"));
                let _ = write_line(&mut r.stdin, &wire::error_response(&id, &err));
            }
            (None, None) => {}
        }
    }

    fn fail_pending(&mut self, why: &str) {
        for (_, p) in self.pending.drain() {
            let err = RpcError::new(code::CONNECTION_CLOSED, why);
            let _ = p.reply.send(Reply::Failed(err));
        }
    }

    fn fail_waiting(&mut self, why: &str) {
        for cmd in self.waiting.drain(..) {
            if let Cmd::Call { reply, .. } = cmd {
                let _ = reply.send(Reply::Failed(RpcError::new(code::CONNECTION_CLOSED, why)));
            }
        }
    }

    fn spawn_and_handshake(&mut self) -> std::io::Result<Running> {
        let mut cmd = Command::new(&self.cfg.command);
        cmd.args(&self.cfg.args)
            .envs(self.cfg.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        if let Some(dir) = &self.cfg.cwd {
            cmd.current_dir(dir);
        }
        let mut child = cmd.spawn()?;
        let (Some(stdin), Some(stdout), Some(stderr)) =
            (child.stdin.take(), child.stdout.take(), child.stderr.take())
        else {
            let _ = child.kill();
            let _ = child.wait();
            return Err(std::io::Error::other("no pipes"));
        };
        let (tx, lines) = channel::unbounded();
        let name = self.name.clone();
        std::thread::Builder::new()
            .name(format!("mcp-{name}-out"))
            .spawn(move || read_stdout(&name, stdout, &tx))?;
        let name = self.name.clone();
        std::thread::Builder::new()
            .name(format!("mcp-{name}-err"))
            .spawn(move || log_stderr(&name, stderr))?;
        let mut r = Running {
            child,
            stdin,
            lines,
            modern: false,
            started: Instant::now(),
        };
        match self.handshake(&mut r) {
            Ok(()) => Ok(r),
            Err(e) => {
                let _ = r.child.kill();
                let _ = r.child.wait();
                Err(e)
            }
        }
    }

    /// `server/discover` first; a child that does not answer it as a
    /// modern server gets the `initialize` handshake.
    fn handshake(&mut self, r: &mut Running) -> std::io::Result<()> {
        let mut params = Value::Object(Map::new());
        set_modern_meta(&mut params);
        let discover = json!({"jsonrpc":"2.0","id":0,"method":"server/discover","params":params});
        let answer = self.ask(r, &discover)?;
        let modern = answer
            .pointer("/result/supportedVersions")
            .and_then(Value::as_array)
            .is_some_and(|v| v.iter().any(|v| v == wire::MODERN_VERSION));
        if modern {
            r.modern = true;
            return Ok(());
        }
        let init = json!({"jsonrpc":"2.0","id":0,"method":"initialize","params":{
            "protocolVersion": wire::HANDSHAKE_VERSIONS[0],
            "capabilities": {},
            "clientInfo": gateway_info(),
        }});
        let answer = self.ask(r, &init)?;
        if answer.get("result").is_none() {
            return Err(std::io::Error::other(format!(
                "initialize failed: {}",
                answer.get("error").unwrap_or(&Value::Null)
            )));
        }
        write_line(
            &mut r.stdin,
            &json!({"jsonrpc":"2.0","method":"notifications/initialized"}),
        )
    }

    /// Sends a request with id 0 and waits for its response (anything
    /// else the child says meanwhile is dropped).
    fn ask(&mut self, r: &mut Running, msg: &Value) -> std::io::Result<Value> {
        write_line(&mut r.stdin, msg)?;
        let until = Instant::now() + HANDSHAKE_WAIT;
        loop {
            let left = until.saturating_duration_since(Instant::now());
            match r.lines.recv_timeout(left) {
                Ok(Some(m))
                    if m.get("id") == Some(&Value::from(0)) && m.get("method").is_none() =>
                {
                    return Ok(m)
                }
                Ok(Some(_)) => {}
                Ok(None) | Err(RecvTimeoutError::Disconnected) => {
                    return Err(std::io::Error::other(
                        "the server exited during its handshake",
                    ))
                }
                Err(RecvTimeoutError::Timeout) => {
                    return Err(std::io::Error::other("no answer to the handshake"))
                }
            }
        }
    }

    fn stop(mut self, r: Running, (): ()) {
        self.fail_pending("the server is stopping");
        self.fail_waiting("the server is stopping");
        let Running {
            mut child, stdin, ..
        } = r;
        drop(stdin);
        if wait_for(&mut child, STOP_GRACE) {
            return;
        }
        if let Ok(pid) = i32::try_from(child.id()) {
            // SAFETY: signalling our own child by its pid; it has not been
            // reaped (wait_for did not see it exit), so the pid is still its.
            unsafe { libc::kill(pid, libc::SIGTERM) };
        }
        if !wait_for(&mut child, STOP_GRACE) {
            let _ = child.kill();
            let _ = child.wait();
        }
        log::info!("mcp server `{}`: stopped", self.name);
    }
}

/// True once `child` has exited, waiting at most `d`.
fn wait_for(child: &mut Child, d: Duration) -> bool {
    let until = Instant::now() + d;
    loop {
        match child.try_wait() {
            Ok(Some(_)) | Err(_) => return true,
            Ok(None) if Instant::now() >= until => return false,
            // The supervisor's own thread, never a shard.
            #[allow(clippy::disallowed_methods)]
            Ok(None) => std::thread::sleep(Duration::from_millis(20)),
        }
    }
}

fn write_line(stdin: &mut ChildStdin, msg: &Value) -> std::io::Result<()> {
    let mut line = serde_json::to_vec(msg).map_err(std::io::Error::other)?;
    line.push(b'\n');
    stdin.write_all(&line)?;
    stdin.flush()
}

/// Each stdout line as a message; `None` once it closes (or breaks the
/// framing).
fn read_stdout(name: &str, stdout: std::process::ChildStdout, tx: &Sender<Option<Value>>) {
    let mut reader = BufReader::new(stdout);
    let mut line = Vec::new();
    loop {
        line.clear();
        match (&mut reader)
            .take(MAX_LINE as u64 + 1)
            .read_until(b'\n', &mut line)
        {
            Ok(0) | Err(_) => break,
            Ok(_) if line.len() > MAX_LINE => {
                log::warn!(
                    "mcp server `{name}`: a message over {MAX_LINE} bytes; dropping the server"
                );
                break;
            }
            Ok(_) => {}
        }
        let text = line.trim_ascii();
        if text.is_empty() {
            continue;
        }
        match serde_json::from_slice::<Value>(text) {
            Ok(v) if v.is_object() => {
                if tx.send(Some(v)).is_err() {
                    return;
                }
            }
            _ => log::warn!(
                "mcp server `{name}`: not a JSON-RPC message on stdout: {}",
                String::from_utf8_lossy(&text[..text.len().min(200)])
            ),
        }
    }
    let _ = tx.send(None);
}

fn log_stderr(name: &str, stderr: std::process::ChildStderr) {
    let reader = BufReader::new(stderr.take(u64::MAX));
    for line in reader.split(b'\n') {
        let Ok(line) = line else { break };
        let line = String::from_utf8_lossy(&line);
        let line = line.trim_end();
        if !line.is_empty() {
            log::info!(
                "mcp server `{name}` stderr: {}",
                &line[..line.floor_char_boundary_compat(2000)]
            );
        }
    }
}

/// Byte index at most `max` on a char boundary (str::floor_char_boundary
/// is not stable at our MSRV).
trait FloorBoundary {
    fn floor_char_boundary_compat(&self, max: usize) -> usize;
}

impl FloorBoundary for str {
    fn floor_char_boundary_compat(&self, max: usize) -> usize {
        if max >= self.len() {
            return self.len();
        }
        (0..=max)
            .rev()
            .find(|&i| self.is_char_boundary(i))
            .unwrap_or(0)
    }
}

/// Who the gateway says it is: to upstream servers, and to its own
/// clients (`serverInfo`).
pub fn gateway_info() -> Value {
    static INFO: std::sync::LazyLock<Value> = std::sync::LazyLock::new(
        || json!({"name": "shardgate", "version": env!("CARGO_PKG_VERSION")}),
    );
    INFO.clone()
}

/// Gives `params` the modern envelope: the gateway's version, identity and
/// (no) client capabilities, keeping a progress token already there.
pub fn set_modern_meta(params: &mut Value) {
    if !params.is_object() {
        *params = Value::Object(Map::new());
    }
    if let Some(p) = params.as_object_mut() {
        let meta = p.remove("_meta");
        p.insert("_meta".into(), modern_meta(meta));
    }
}

/// A request's `_meta` (if any) made the modern envelope's: the gateway's
/// version, identity and (no) client capabilities, with the rest kept.
pub fn modern_meta(meta: Option<Value>) -> Value {
    let mut m = match meta {
        Some(Value::Object(m)) => m,
        _ => Map::new(),
    };
    m.insert(wire::META_VERSION.into(), wire::MODERN_VERSION.into());
    m.insert(wire::META_CLIENT_INFO.into(), gateway_info());
    m.insert(wire::META_CLIENT_CAPABILITIES.into(), json!({}));
    Value::Object(m)
}

/// Takes the modern envelope's keys out of a `_meta` bound for a
/// handshake-era server.
pub fn strip_modern_meta(meta: &mut Map<String, Value>) {
    meta.retain(|k, _| !k.starts_with("io.modelcontextprotocol/"));
}
