// Chat over reliable data messages, in the JSON shape LiveKit's own example apps use on the topic
// `lk-chat-topic` ({id, timestamp, message}), so their participants can chat with this page too.
const TOPIC = "lk-chat-topic";
const MAX_MESSAGES = 200; // the log keeps the latest ones
const encoder = new TextEncoder();
const decoder = new TextDecoder();

export class Chat {
  constructor(log, room) {
    this.log = log;
    this.room = room;
  }

  async send(text) {
    const message = { id: crypto.randomUUID(), timestamp: Date.now(), message: text };
    await this.room.localParticipant.publishData(encoder.encode(JSON.stringify(message)), { reliable: true, topic: TOPIC });
    this.show(this.room.localParticipant, message.message, true);
  }

  // DataReceived: messages on other topics, or not in the chat shape, are not chat.
  receive(payload, participant, topic) {
    if (topic !== TOPIC) return;
    let message;
    try {
      message = JSON.parse(decoder.decode(payload));
    } catch {
      return;
    }
    if (message && typeof message.message === "string") this.show(participant, message.message, false);
  }

  show(participant, text, mine) {
    const item = document.createElement("li");
    item.className = mine ? "mine" : "";
    const who = document.createElement("strong");
    who.textContent = participant ? participant.name || participant.identity : "server";
    const time = document.createElement("time");
    time.textContent = new Date().toLocaleTimeString([], { hour: "2-digit", minute: "2-digit" });
    const body = document.createElement("p");
    body.textContent = text;
    item.append(who, time, body);
    this.log.append(item);
    while (this.log.children.length > MAX_MESSAGES) this.log.firstElementChild.remove();
    this.log.scrollTop = this.log.scrollHeight;
  }

  clear() {
    this.log.replaceChildren();
  }
}
