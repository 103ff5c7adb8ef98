// The chat page: the lobby (name, room, password, the room list), then one
// room's conversation. Every piece of text from the network is set with
// textContent, never parsed as HTML (the page's CSP enforces Trusted Types).

import { Connection, CLOSE } from "./connection.js";
import { frameError, nameProblem, refusal, sentences, textProblem } from "./sentences.js";

const $ = (id) => document.getElementById(id);
const ui = {
  status: $("status"), notice: $("notice"), lobby: $("lobby"), chat: $("chat"),
  enter: $("enter"), name: $("name"), room: $("room"), password: $("password"),
  join: $("join"), create: $("create"), refresh: $("refresh"), rooms: $("rooms"),
  roomsEmpty: $("rooms-empty"), roomTitle: $("room-title"), leave: $("leave"),
  log: $("log"), members: $("members"), say: $("say"), line: $("line"), send: $("send"),
};

const EARLIER = 20; // messages asked for on joining
const RESEND_AFTER = [1500, 3000, 6000]; // ms; then the line is marked not delivered
const HISTORY_MAX = 100;

let conn = null; // the lobby's or the member's connection
let session = null; // the room we are in (or were in, until "Back to rooms")

function el(tag, cls, text) {
  const node = document.createElement(tag);
  if (cls) node.className = cls;
  if (text !== undefined) node.textContent = text;
  return node;
}

function clock(ms) {
  return new Date(ms).toLocaleTimeString([], { hour: "2-digit", minute: "2-digit", second: "2-digit", hourCycle: "h23" });
}

function notice(text, kind = "bad") {
  ui.notice.textContent = text;
  ui.notice.className = kind === "info" ? "notice info" : "notice";
  ui.notice.hidden = !text;
}

function setStatus(text) {
  ui.status.textContent = text;
}

// The current connection, opened on demand; a replaced one says nothing more.
function connection() {
  if (!conn) {
    const c = new Connection({
      event: (frame) => c === conn && onEvent(frame),
      error: (frame) => c === conn && onError(frame),
      closed: (info) => {
        if (c !== conn) return;
        conn = null;
        onClosed(info);
      },
    });
    conn = c;
  }
  return conn;
}

// -- the lobby -------------------------------------------------------------

function showLobby() {
  ui.chat.hidden = true;
  ui.lobby.hidden = false;
  setStatus("Not in a room");
  document.title = "ocm chat";
}

async function listRooms() {
  ui.refresh.disabled = true;
  try {
    const { response, complete } = await connection().request({ op: "list" });
    if (!complete) {
      notice(refusal("list", "", "", response, false));
      return;
    }
    ui.rooms.replaceChildren();
    for (const room of complete.rooms) {
      const button = el("button");
      button.type = "button";
      button.append(el("span", "room-name", room.name));
      const count = room.members === 1 ? "1 member" : `${room.members} members`;
      button.append(el("span", "meta", room.password ? `${count} · password` : count));
      button.addEventListener("click", () => {
        ui.room.value = room.name;
        (ui.name.value === "" ? ui.name : room.password ? ui.password : ui.join).focus();
      });
      const item = el("li");
      item.append(button);
      ui.rooms.append(item);
    }
    ui.roomsEmpty.hidden = complete.rooms.length > 0;
  } catch {
    notice(sentences.unreachable());
  } finally {
    ui.refresh.disabled = false;
  }
}

async function enter(op) {
  notice(""); // the last refusal goes; the answer to this one replaces it
  const name = ui.name.value;
  const room = ui.room.value;
  const password = ui.password.value;
  for (const [value, what, field] of [[name, "your name", ui.name], [room, "the room's name", ui.room]]) {
    const problem = nameProblem(value, what);
    if (problem) {
      notice(problem);
      field.focus();
      return;
    }
  }
  ui.join.disabled = ui.create.disabled = true;
  try {
    const { response, complete } = await connection().request({ op, room, username: name, password });
    if (!complete) {
      notice(refusal(op, room, name, response, password !== ""));
      (response.status === 409 && op === "join" ? ui.name : response.status === 401 ? ui.password : ui.room).focus();
      if (response.status === 404 || response.status === 409) listRooms();
      return;
    }
    notice("");
    begin(complete, name, password);
  } catch {
    notice(sentences.unreachable());
  } finally {
    ui.join.disabled = ui.create.disabled = false;
  }
}

// -- a room ------------------------------------------------------------------

function begin(complete, name, password) {
  session = {
    room: complete.room, name, password, host: complete.host, timeout: complete.timeout,
    active: true, seq: complete.seq, nextId: 1, pending: new Map(), seen: new Map(),
    members: [], marker: null, earlier: null,
  };
  ui.log.replaceChildren();
  ui.roomTitle.textContent = complete.room;
  document.title = `${complete.room} · ocm chat`;
  ui.leave.textContent = "Leave";
  ui.line.disabled = ui.send.disabled = false;
  ui.lobby.hidden = true;
  ui.chat.hidden = false;
  attach(complete, `You ${complete.host ? "created" : "joined"} room “${complete.room}” as “${name}”.`, 0);
  ui.line.focus();
}

// A membership starts (or restarts after a reconnect): the members, a marker
// in the conversation, and the messages from before it.
function attach(complete, markerText, since) {
  session.members = [...complete.members];
  session.nextId = 1;
  renderMembers();
  session.marker = addLine(el("li", "divider", markerText));
  setStatus(`In room “${session.room}” as “${session.name}”`);
  const last = complete.seq;
  if (last > 0 && complete.history > 0) {
    const first = since > 0 ? since + 1 : Math.max(1, last - Math.min(EARLIER, complete.history) + 1);
    if (first <= last) {
      session.earlier = since > 0 ? null : el("li", "divider", "Earlier messages");
      conn.send({ op: "history", first: Math.max(first, last - HISTORY_MAX + 1), last });
    }
  }
  session.seq = Math.max(session.seq, last);
}

function renderMembers() {
  ui.members.replaceChildren(...session.members.map((m) => el("li", null, m === session.name ? `${m} (you)` : m)));
}

function addLine(item) {
  const atBottom = ui.log.scrollTop + ui.log.clientHeight >= ui.log.scrollHeight - 8;
  ui.log.append(item);
  if (atBottom) item.scrollIntoView({ block: "end" });
  return item;
}

function messageItem(seq, time, name, text, cls) {
  const item = el("li", cls);
  if (seq) item.dataset.seq = seq;
  const stamp = el("time", null, time ? clock(time) : "--:--:--");
  if (time) stamp.dateTime = new Date(time).toISOString();
  // Spaces as text, so that a copied line reads "12:01:33 bob: hello".
  item.append(stamp, " ", el("span", "name", `${name}:`), " ", el("span", "text", text));
  return item;
}

// A message from before this membership, put in seq order above its marker.
function addEarlier(frame) {
  if (session.seen.has(frame.seq)) return;
  const item = messageItem(frame.seq, frame.time, frame.name, frame.text, session.earlier ? "earlier" : "missed");
  if (session.earlier && !session.earlier.isConnected) ui.log.insertBefore(session.earlier, session.marker);
  let before = session.marker;
  while (before.previousElementSibling && Number(before.previousElementSibling.dataset.seq || 0) > frame.seq) {
    before = before.previousElementSibling;
  }
  ui.log.insertBefore(item, before);
  session.seen.set(frame.seq, item);
  item.scrollIntoView({ block: "nearest" });
}

function onEvent(frame) {
  if (!session || !session.active) return;
  const s = session;
  switch (frame.kind) {
    case "message":
      if (s.seen.has(frame.seq)) return;
      s.seen.set(frame.seq, addLine(messageItem(frame.seq, frame.time, frame.name, frame.text)));
      s.seq = Math.max(s.seq, frame.seq);
      break;
    case "history":
      addEarlier(frame);
      break;
    case "expired":
      if (s.earlier) {
        if (!s.earlier.isConnected) ui.log.insertBefore(s.earlier, s.marker);
        s.earlier.after(el("li", "event", sentences.expired));
      }
      break;
    case "echo": {
      const line = s.pending.get(frame.id);
      if (!line) return;
      s.pending.delete(frame.id);
      clearTimeout(line.timer);
      line.item.classList.remove("pending");
      line.item.dataset.seq = frame.seq;
      const stamp = line.item.querySelector("time");
      stamp.textContent = clock(frame.time);
      stamp.dateTime = new Date(frame.time).toISOString();
      s.seen.set(frame.seq, line.item);
      s.seq = Math.max(s.seq, frame.seq);
      break;
    }
    case "joined":
      if (!s.members.includes(frame.name)) s.members.push(frame.name);
      renderMembers();
      addLine(el("li", "event", `${frame.name} joined`));
      break;
    case "left":
    case "timed_out":
      s.members = s.members.filter((m) => m !== frame.name);
      renderMembers();
      addLine(el("li", "event", frame.kind === "left" ? `${frame.name} left` : `${frame.name} was silent too long and was removed`));
      break;
    case "closed":
      end(sentences.closed(s.room, frame.text));
      break;
  }
}

function onError(frame) {
  if (frame.status === 413 || !session) {
    notice(frameError(frame));
  } else {
    session.error = frameError(frame);
  }
}

// The membership is over: the conversation stays, the input does not.
function end(why) {
  const s = session;
  if (!s || !s.active) return;
  s.active = false;
  for (const line of s.pending.values()) fail(line);
  s.pending.clear();
  addLine(el("li", "event closed", why));
  notice(why, "info");
  ui.line.disabled = ui.send.disabled = true;
  ui.leave.textContent = "Back to rooms";
  setStatus(`Not in a room (was in “${s.room}”)`);
  ui.leave.focus();
}

function fail(line) {
  clearTimeout(line.timer);
  line.item.classList.remove("pending");
  line.item.classList.add("failed");
  line.item.append(el("span", "state", sentences.undelivered));
}

function say(text) {
  const s = session;
  const problem = textProblem(text);
  if (problem) {
    notice(problem);
    return false;
  }
  const id = s.nextId++;
  const item = addLine(messageItem(0, 0, s.name, text, "mine pending"));
  const line = { id, text, item, tries: 0, timer: 0 };
  s.pending.set(id, line);
  const attempt = () => {
    if (!s.active || !s.pending.has(id)) return;
    if (line.tries === RESEND_AFTER.length) {
      s.pending.delete(id);
      fail(line);
      return;
    }
    // The same id again: the server relays it once and echoes it again.
    if (conn) conn.send({ op: "send", id, text });
    line.timer = setTimeout(attempt, RESEND_AFTER[line.tries++]);
  };
  attempt();
  return true;
}

function leave() {
  const s = session;
  if (s && s.active) {
    s.active = false;
    for (const line of s.pending.values()) clearTimeout(line.timer);
    const old = conn;
    conn = null;
    if (old) {
      old.send({ op: "leave" });
      old.close();
    }
    notice(sentences.left(s.room), "info");
  } else {
    notice("");
  }
  session = null;
  showLobby();
  ui.room.focus();
  listRooms();
}

// -- a connection that ends -------------------------------------------------

function onClosed({ code, reason }) {
  const s = session;
  if (!s || !s.active) return; // the lobby's connection: reopened on the next request
  if (s.reconnecting) return; // an attempt that failed: the loop below goes on
  if (code === CLOSE.roomClosed) {
    end(sentences.closed(s.room, reason));
  } else if (code === CLOSE.removed) {
    end(sentences.removed(s.room));
  } else if (code === CLOSE.malformed) {
    end(s.error || sentences.internal);
  } else if (code === CLOSE.internal) {
    end(sentences.internal);
  } else if (s.host) {
    end(sentences.hostDropped(s.room));
  } else {
    reconnect(s);
  }
}

async function reconnect(s) {
  s.reconnecting = true;
  try {
    await rejoin(s);
  } finally {
    s.reconnecting = false;
  }
}

async function rejoin(s) {
  for (const line of s.pending.values()) fail(line);
  s.pending.clear();
  ui.line.disabled = ui.send.disabled = true;
  setStatus(`Reconnecting to “${s.room}”…`);
  const deadline = Date.now() + (s.timeout + 20) * 1000;
  let delay = 1;
  let said = sentences.dropped;
  while (session === s && s.active && Date.now() < deadline) {
    notice(said(delay), "info");
    await new Promise((r) => setTimeout(r, delay * 1000));
    if (session !== s || !s.active) return;
    let result;
    try {
      result = await connection().request({ op: "join", room: s.room, username: s.name, password: s.password });
    } catch {
      said = sentences.dropped;
      delay = Math.min(delay * 2, 15);
      continue;
    }
    const { response, complete } = result;
    if (complete) {
      if (session !== s || !s.active) {
        const old = conn;
        conn = null;
        old.send({ op: "leave" });
        old.close();
        return;
      }
      ui.line.disabled = ui.send.disabled = false;
      attach(complete, `Reconnected at ${clock(Date.now())}.`, s.seq);
      notice(sentences.reconnected, "info");
      ui.line.focus();
      return;
    }
    if (response.status === 409) {
      said = sentences.waitingOld;
    } else if (response.status === 429 || response.status === 503) {
      delay = Math.max(delay, response.retry_after || delay);
      continue;
    } else if (response.status === 404) {
      end(sentences.gone(s.room));
      return;
    } else {
      end(refusal("join", s.room, s.name, response, s.password !== ""));
      return;
    }
    delay = Math.min(delay * 2, 15);
  }
  if (session === s) end(sentences.gaveUp(s.room));
}

// -- wiring --------------------------------------------------------------------

ui.enter.addEventListener("submit", (e) => {
  e.preventDefault();
  enter(e.submitter && e.submitter.value === "create" ? "create" : "join");
});
ui.refresh.addEventListener("click", () => listRooms());
ui.say.addEventListener("submit", (e) => {
  e.preventDefault();
  const text = ui.line.value;
  if (!session || !session.active || text.trim() === "") return;
  if (say(text)) ui.line.value = "";
  ui.line.focus();
});
ui.leave.addEventListener("click", leave);
addEventListener("pagehide", () => {
  if (session && session.active && conn) {
    conn.send({ op: "leave" });
    conn.close();
    conn = null;
    session.leftWithPage = true;
  }
});
// Back to a page kept in the browser's cache: its room was left on the way out.
addEventListener("pageshow", (e) => {
  if (e.persisted && session && session.leftWithPage) end(sentences.leftWithPage(session.room));
});

showLobby();
listRooms();
ui.name.focus();
