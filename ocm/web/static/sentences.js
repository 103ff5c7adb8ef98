// Every refusal and every change of the connection, as a sentence for a
// person. Names are quoted as text; nothing here is ever parsed as HTML.

const MAX_NAME_BYTES = 255;
export const MAX_TEXT_BYTES = 3072;

const bytes = (s) => new TextEncoder().encode(s).length;

// The daemon's name rules (ocm/names.py), checked before asking it.
export function nameProblem(value, what) {
  if (value === "") return `Please type ${what}.`;
  if (bytes(value) > MAX_NAME_BYTES) return `${cap(what)} is too long: at most ${MAX_NAME_BYTES} bytes.`;
  if (value !== value.trim()) return `${cap(what)} cannot start or end with a space.`;
  if (/[\p{Cc}\p{Cs}\u2028\u2029]|(?!\u200d)\p{Cf}/u.test(value)) {
    return `${cap(what)} contains an invisible control character; please retype it.`;
  }
  return null;
}

export function textProblem(text) {
  const size = bytes(text);
  if (size > MAX_TEXT_BYTES) return `That message is too long (${size} bytes); the limit is ${MAX_TEXT_BYTES}. Split it up.`;
  return null;
}

const MAX_REASON_BYTES = 200;

// A reason for removing or banning someone, checked as the server will.
export function reasonProblem(reason) {
  if (bytes(reason) > MAX_REASON_BYTES) return `That reason is too long: at most ${MAX_REASON_BYTES} bytes.`;
  if (/[\u0000-\u001f\u007f-\u009f]/u.test(reason)) return "The reason contains a control character; please retype it.";
  return null;
}

// Every event of a room as a sentence, with the terminal client's words
// (ocm-client prints them after "* "). Messages are not sentences.
// The text of an event the daemon's operator caused (ocm-admin) starts so.
const OPERATOR = "the server's operator";

export function eventSentence(frame, me) {
  const who = frame.name;
  const you = who === me;
  let by = "the host";
  let text = frame.text || "";
  if (text === OPERATOR || text.startsWith(`${OPERATOR}: `)) {
    by = OPERATOR;
    text = text.slice(OPERATOR.length + 2);
  }
  const why = text ? `: ${text}` : "";
  switch (frame.kind) {
    case "joined": return `${who} joined`;
    case "left": return `${who} left`;
    case "timed_out": return `${who} was silent too long and was removed`;
    case "kicked": return you ? `You were removed from the room by ${by}${why}` : `${who} was removed by ${by}${why}`;
    case "banned": return you ? `You were banned from the room by ${by}${why}` : `${who} was banned by ${by}${why}`;
    case "unbanned": return `${who} was unbanned by ${by} and may join again`;
    case "muted": return you ? `You were muted by ${by}: what you say is not sent` : `${who} was muted by ${by}`;
    case "unmuted": return you ? `You were unmuted by ${by}: you may speak again` : `${who} was unmuted by ${by}`;
    case "host": return you ? "You are now the host" : `${who} is now the host`;
    case "closed": return `The room closed${why}`;
    default: return `${frame.kind} ${who}`;
  }
}

// A host's command, as the terminal client's line would be.
export function commandWords(command, name) {
  return `/${command} ${name}`;
}

const cap = (s) => s.charAt(0).toUpperCase() + s.slice(1);
const q = (s) => `“${s}”`;
const seconds = (n) => (n === 1 ? "1 second" : `${n} seconds`);

// A refused list, create or join (a RESPONSE that is not 200).
export function refusal(op, room, name, response, hadPassword) {
  const { status, message = "", retry_after: wait } = response;
  const later = wait ? ` Try again in ${seconds(wait)}.` : " Try again in a little while.";
  switch (status) {
    case 400:
      return `The server could not accept that request: ${message}.`;
    case 401:
      return hadPassword
        ? `That password is not right for room ${q(room)}.`
        : `Room ${q(room)} has a password. Type it in the password field and join again.`;
    case 403:
      return `You are banned from room ${q(room)}.`;
    case 404:
      return `There is no room called ${q(room)}. Check the spelling, or create it.`;
    case 409:
      return op === "create"
        ? `A room called ${q(room)} already exists. Join it, or choose another room name.`
        : `Someone in room ${q(room)} is already called ${q(name)}. Choose another name.`;
    case 413:
      return "That request is too large for the server.";
    case 429:
      return /password/.test(message)
        ? `Too many wrong passwords for room ${q(room)}.${later}`
        : `Too many attempts from your address.${later}`;
    case 503:
      if (/full/.test(message)) return `Room ${q(room)} is full.${later}`;
      if (/rooms/.test(message)) return `The server has all the rooms it can hold.${later}`;
      return `The server is busy.${later}`;
    case 307:
      return `Room ${q(room)} is on another server of this cluster, which this page cannot follow.`;
    default:
      return `The server refused: ${message || `status ${status}`}.`;
  }
}

// An error frame: a refused send or a malformed request.
export function frameError(error) {
  if (error.status === 413) return `That message was not sent: it is too long (at most ${MAX_TEXT_BYTES} bytes).`;
  return `The server refused a request from this page (${error.message}). Reload the page if this happens again.`;
}

export const sentences = {
  unreachable: (wait) => `Cannot reach the chat server. Check your connection.${wait ? ` Trying again in ${seconds(wait)}.` : ""}`,
  refusedSocket: "The chat server refused the connection. Reload the page; if it goes on, this address may not be allowed to use the chat.",
  dropped: (wait) => `The connection dropped. Reconnecting in ${seconds(wait)}…`,
  waitingOld: (wait) => `Reconnecting: the server still holds your old connection. Trying again in ${seconds(wait)}…`,
  reconnected: "Reconnected. Anything you missed is shown above.",
  gaveUp: (room) => `Could not get back into room ${q(room)}. Join again when your connection is back.`,
  gone: (room) => `Room ${q(room)} is gone: its host left or the server restarted.`,
  closed: (room, why) => `Room ${q(room)} closed: ${why || "no reason given"}.`,
  removed: (room) => `You were away too long and were removed from room ${q(room)}. Join again to come back.`,
  internal: "The server had an internal error. Join the room again.",
  hostLeaving: (room) => `You are the host: leaving closes room ${q(room)} for everyone. To keep it open, make someone host first (Make host, in the member list); or press Leave again.`,
  left: (room) => `You left room ${q(room)}.`,
  leftWithPage: (room) => `You left room ${q(room)} when you left this page. Join again to come back.`,
  undelivered: "not delivered",
  refusedLine: (why) => `not delivered: ${why}`,
  refusedCommand: (what, why) => `Not done (${what}): ${why}.`,
  confirm: (what, name) => what === "ban"
    ? `Ban ${q(name)}? They are removed, and cannot come back under any name from their address until you unban them.`
    : `Remove ${q(name)} from the room? They may join again.`,
  nowHost: "You are now the host: the room lives while you are in it, and you can moderate it from the member list.",
  kickedClose: (room, why) => `You were removed from room ${q(room)} by the host${why ? `: ${why}` : ""}.`,
  restarting: "The server is stopping or restarting; this page will reconnect when it is back.",
  restartWait: (wait) => `The server is restarting. Reconnecting in ${seconds(wait)}…`,
  waitingHost: (wait) => `The room is not there (the server may have lost it); waiting for its host to create it again. Trying again in ${seconds(wait)}…`,
  madeAnew: (time, byUs) => `Back at ${time}, in the room ${byUs ? "created again by you" : "as its host created it again"}.`,
  backAnew: (room) => `Reconnected, but the server had lost room ${q(room)}, which is new now: messages said while it was away may be missing.`,
  expired: "Older messages are no longer kept.",
};
