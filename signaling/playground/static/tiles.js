// One tile per participant (and one more per screen share), kept in step with the room: video, name, mute state,
// speaking highlight, connection quality, and for remote tracks a stats line each.
import { TrackStats, formatStats } from "./stats.js";

const { Track } = window.LivekitClient;

function element(tag, className, text) {
  const node = document.createElement(tag);
  if (className) node.className = className;
  if (text !== undefined) node.textContent = text;
  return node;
}

function initials(name) {
  return name.split(/\s+/).filter(Boolean).slice(0, 2).map((word) => [...word][0].toUpperCase()).join("") || "?";
}

function displayName(participant) {
  return participant.name || participant.identity;
}

function createTile(key) {
  const tile = element("figure", "tile");
  tile.dataset.key = key;
  tile.video = element("video");
  tile.video.autoplay = true;
  tile.video.muted = true; // audio plays from its own element; a video element never doubles it
  tile.video.playsInline = true;
  tile.avatar = element("div", "avatar");
  const caption = element("figcaption");
  tile.mic = element("span", "mic");
  tile.mic.setAttribute("aria-hidden", "true");
  tile.label = element("span", "name");
  tile.quality = element("span", "quality");
  tile.quality.append(element("i"), element("i"), element("i"));
  caption.append(tile.mic, tile.label, tile.quality);
  tile.stats = element("div", "stats");
  tile.append(tile.video, tile.avatar, caption, tile.stats);
  tile.attached = null;
  return tile;
}

export class Tiles {
  constructor(container, room) {
    this.container = container;
    this.room = room;
    this.tiles = new Map(); // key -> tile element
    this.trackStats = new Map(); // track sid -> TrackStats
  }

  participants() {
    return [this.room.localParticipant, ...this.room.remoteParticipants.values()];
  }

  // Brings the tiles in line with the room: call on any room event.
  refresh() {
    const wanted = new Map();
    for (const participant of this.participants()) {
      wanted.set(`${participant.identity}/camera`, [participant, Track.Source.Camera]);
      if (participant.getTrackPublication(Track.Source.ScreenShare)) {
        wanted.set(`${participant.identity}/screen`, [participant, Track.Source.ScreenShare]);
      }
    }
    for (const [key, tile] of this.tiles) {
      if (!wanted.has(key)) {
        if (tile.attached) tile.attached.detach(tile.video);
        tile.remove();
        this.tiles.delete(key);
      }
    }
    for (const [key, [participant, source]] of wanted) {
      let tile = this.tiles.get(key);
      if (!tile) {
        tile = createTile(key);
        this.tiles.set(key, tile);
        this.container.append(tile);
      }
      this.update(tile, participant, source);
    }
    this.container.dataset.count = String(this.tiles.size);
  }

  update(tile, participant, source) {
    const local = participant === this.room.localParticipant;
    const video = participant.getTrackPublication(source);
    const mic = participant.getTrackPublication(Track.Source.Microphone);
    const track = video && video.track ? video.track : null;
    if (tile.attached !== track) {
      if (tile.attached) tile.attached.detach(tile.video);
      if (track) track.attach(tile.video);
      tile.attached = track;
    }
    const name = displayName(participant);
    const screen = source === Track.Source.ScreenShare;
    tile.label.textContent = `${name}${screen ? " (screen)" : ""}${local ? " (you)" : ""}`;
    tile.avatar.textContent = initials(name);
    Object.assign(tile.dataset, {
      identity: participant.identity,
      name,
      local: String(local),
      source: screen ? "screen" : "camera",
      camera: track && !video.isMuted ? "on" : "off",
      mic: !mic ? "none" : mic.isMuted ? "muted" : "on",
      speaking: String(!screen && participant.isSpeaking),
      quality: participant.connectionQuality || "unknown",
      mirror: String(local && !screen && !!track && !track.isUserProvided),
    });
    tile.mic.title = tile.dataset.mic === "muted" ? "microphone muted" : "";
    tile.quality.title = `connection: ${tile.dataset.quality}`;
    if (local) tile.stats.hidden = true;
  }

  // One stats line per remote track of each tile (its video, and on the camera tile the microphone).
  async sampleStats() {
    const seen = new Set();
    for (const tile of this.tiles.values()) {
      const participant = this.participants().find((p) => p.identity === tile.dataset.identity);
      if (!participant || participant === this.room.localParticipant) continue;
      const sources = tile.dataset.source === "screen"
        ? [Track.Source.ScreenShare] : [Track.Source.Camera, Track.Source.Microphone];
      const lines = [];
      for (const source of sources) {
        const publication = participant.getTrackPublication(source);
        if (!publication || !publication.track) continue;
        seen.add(publication.trackSid);
        if (!this.trackStats.has(publication.trackSid)) this.trackStats.set(publication.trackSid, new TrackStats(publication));
        const stats = await this.trackStats.get(publication.trackSid).sample();
        if (stats) lines.push(formatStats(stats));
      }
      tile.stats.replaceChildren(...lines.map((line) => element("div", "", line)));
    }
    for (const sid of this.trackStats.keys()) if (!seen.has(sid)) this.trackStats.delete(sid);
  }

  clear() {
    for (const tile of this.tiles.values()) if (tile.attached) tile.attached.detach(tile.video);
    this.tiles.clear();
    this.trackStats.clear();
    this.container.replaceChildren();
  }
}
