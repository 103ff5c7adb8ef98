// One WebSocket to the daemon, speaking the JSON binding (docs/protocol.md,
// "The WebSocket binding"): room requests answered in order, events and
// errors handed to the page.

// The server's close codes (ocm/web/chat.py).
export const CLOSE = {
  normal: 1000, roomClosed: 4000, removed: 4001, idle: 4002, kicked: 4003, restarting: 4004,
  malformed: 4400, internal: 4500,
};

export function socketUrl() {
  const scheme = location.protocol === "https:" ? "wss:" : "ws:";
  const base = location.pathname.replace(/[^/]*$/, "");
  return `${scheme}//${location.host}${base}ws`;
}

export class Connection {
  // handlers: event(frame), error(frame), closed({code, reason, opened})
  constructor(handlers) {
    this.handlers = handlers;
    this.socket = null;
    this.opened = false;
    this.pending = null; // the room request awaiting its response (and complete)
  }

  get open() {
    return this.socket !== null && this.socket.readyState === WebSocket.OPEN;
  }

  connect() {
    return new Promise((resolve, reject) => {
      const socket = new WebSocket(socketUrl());
      this.socket = socket;
      socket.addEventListener("open", () => {
        this.opened = true;
        resolve();
      });
      socket.addEventListener("message", (e) => this._frame(e.data));
      socket.addEventListener("close", (e) => {
        if (this.socket !== socket) return;
        this.socket = null;
        const opened = this.opened;
        this.opened = false;
        if (this.pending) {
          this.pending.reject(new Error("closed"));
          this.pending = null;
        }
        if (!opened) reject(new Error("unreachable"));
        this.handlers.closed({ code: e.code, reason: e.reason, opened });
      });
    });
  }

  // list, create or join: resolves {response, complete}; complete is null
  // when the response refused.
  async request(frame) {
    if (!this.open) await this.connect();
    if (this.pending) throw new Error("busy");
    return new Promise((resolve, reject) => {
      this.pending = { resolve, reject, response: null };
      this.socket.send(JSON.stringify(frame));
    });
  }

  send(frame) {
    if (!this.open) return false;
    this.socket.send(JSON.stringify(frame));
    return true;
  }

  close() {
    const socket = this.socket;
    this.socket = null;
    this.opened = false;
    if (socket) socket.close(CLOSE.normal);
  }

  _frame(data) {
    let frame;
    try {
      frame = JSON.parse(data);
    } catch {
      return;
    }
    if (frame.type === "response" && this.pending) {
      if (frame.status === 200) {
        this.pending.response = frame;
      } else {
        this.pending.resolve({ response: frame, complete: null });
        this.pending = null;
      }
    } else if (frame.type === "complete" && this.pending) {
      this.pending.resolve({ response: this.pending.response, complete: frame });
      this.pending = null;
    } else if (frame.type === "event") {
      this.handlers.event(frame);
    } else if (frame.type === "error") {
      this.handlers.error(frame);
    }
  }
}
