// The playground page: the lobby asks for a room and a name, gets a token from this server's development-only
// endpoint, joins with LiveKit's JS SDK, publishes this tab's media, and runs the call view until Leave.
const $ = (id) => document.getElementById(id);
const SDK_HOST = "cdn.jsdelivr.net";

function showLobbyError(text) {
  $("lobby-error").textContent = text;
  $("lobby-error").hidden = !text;
}

function notice(text) {
  $("call-notice").textContent = text;
}

async function fetchToken(room, name) {
  let response;
  try {
    response = await fetch(`/playground/token?${new URLSearchParams({ room, name })}`, { cache: "no-store" });
  } catch {
    throw new Error(`Cannot reach the tern server at ${location.origin}. Is it still running? Start it with \`tern --dev\`.`);
  }
  let body = {};
  try {
    body = await response.json();
  } catch {
    // Not ours (a proxy's error page?): the status says enough.
  }
  if (!response.ok) throw new Error(`The server refused a token: ${body.error || `HTTP ${response.status}`}.`);
  return body;
}

// Everything the call view needs, made once the SDK is known to be loaded.
async function start() {
  const { Room, RoomEvent, Track, DisconnectReason } = window.LivekitClient;
  const [{ openMedia }, { Tiles }, { Chat }] = await Promise.all([
    import("./media.js"), import("./tiles.js"), import("./chat.js"),
  ]);
  let call = null; // {room, tiles, chat, timer, leaving}

  function setButton(id, pressed, text) {
    $(id).setAttribute("aria-pressed", String(pressed));
    $(id).textContent = text;
  }

  function refreshControls() {
    if (!call) return;
    const local = call.room.localParticipant;
    const mic = local.getTrackPublication(Track.Source.Microphone);
    const camera = local.getTrackPublication(Track.Source.Camera);
    setButton("mic-button", !!mic && mic.isMuted, mic && mic.isMuted ? "Unmute" : "Mute");
    setButton("camera-button", !!camera && camera.isMuted, camera && camera.isMuted ? "Camera on" : "Camera off");
    const sharing = !!local.getTrackPublication(Track.Source.ScreenShare);
    setButton("screen-button", sharing, sharing ? "Stop sharing" : "Share screen");
    const count = call.room.remoteParticipants.size + 1;
    $("participant-count").textContent = `${count} participant${count === 1 ? "" : "s"}`;
  }

  function refresh() {
    if (!call) return;
    call.tiles.refresh();
    refreshControls();
  }

  function showLobby(error) {
    if (call) {
      clearInterval(call.timer);
      call.tiles.clear();
      call.chat.clear();
      $("audio-sink").replaceChildren();
      call = null;
    }
    $("call").hidden = true;
    $("lobby").hidden = false;
    $("join-button").disabled = false;
    showLobbyError(error || "");
  }

  async function publishMedia(room, name) {
    const notes = [];
    for (const { track, source, generated, why } of await openMedia(name)) {
      await room.localParticipant.publishTrack(track, { source });
      if (generated) {
        notes.push(source === Track.Source.Camera ? `Camera: ${why}, sending a test pattern.` : `Microphone: ${why}, sending a tone.`);
      }
    }
    notice(notes.join(" "));
  }

  async function join(roomName, name) {
    const grant = await fetchToken(roomName, name);
    const room = new Room({ adaptiveStream: true, dynacast: true });
    call = { room, tiles: new Tiles($("tiles"), room), chat: new Chat($("chat-log"), room), timer: 0, leaving: false };
    const current = call;
    for (const event of [
      RoomEvent.ParticipantConnected, RoomEvent.ParticipantDisconnected, RoomEvent.TrackPublished,
      RoomEvent.TrackUnpublished, RoomEvent.TrackSubscribed, RoomEvent.TrackUnsubscribed, RoomEvent.TrackMuted,
      RoomEvent.TrackUnmuted, RoomEvent.LocalTrackPublished, RoomEvent.LocalTrackUnpublished,
      RoomEvent.ActiveSpeakersChanged, RoomEvent.ConnectionQualityChanged, RoomEvent.ParticipantNameChanged,
    ]) room.on(event, refresh);
    room.on(RoomEvent.TrackSubscribed, (track) => {
      if (track.kind === Track.Kind.Audio) $("audio-sink").append(track.attach());
    });
    room.on(RoomEvent.TrackUnsubscribed, (track) => {
      if (track.kind === Track.Kind.Audio) track.detach().forEach((element) => element.remove());
    });
    room.on(RoomEvent.DataReceived, (payload, participant, kind, topic) => current.chat.receive(payload, participant, topic));
    room.on(RoomEvent.Reconnecting, () => notice("Connection lost: reconnecting…"));
    room.on(RoomEvent.Reconnected, () => notice("Reconnected."));
    room.on(RoomEvent.AudioPlaybackStatusChanged, () => {
      if (!room.canPlaybackAudio) notice("The browser blocked audio: click anywhere on the page to hear the others.");
    });
    room.on(RoomEvent.Disconnected, (reason) => {
      if (call !== current || current.leaving) return;
      const why = DisconnectReason[reason] ? DisconnectReason[reason].toLowerCase().replaceAll("_", " ") : "connection lost";
      showLobby(`Disconnected from the server (${why}).`);
    });
    try {
      await room.connect(`${location.protocol === "https:" ? "wss" : "ws"}://${location.host}`, grant.token);
    } catch (error) {
      call = null;
      throw new Error(`Could not join the room: ${error.message}`);
    }
    $("lobby").hidden = true;
    $("call").hidden = false;
    $("room-title").textContent = room.name;
    notice("");
    history.replaceState(null, "", `?${new URLSearchParams({ room: room.name })}`);
    refresh();
    call.timer = setInterval(() => current.tiles.sampleStats(), 1000);
    room.startAudio().catch(() => {});
    await publishMedia(room, name);
    refresh();
  }

  $("join-form").addEventListener("submit", async (event) => {
    event.preventDefault();
    showLobbyError("");
    $("join-button").disabled = true;
    try {
      await join($("room-input").value.trim(), $("name-input").value.trim());
    } catch (error) {
      if (call) await call.room.disconnect();
      showLobby(error.message);
    }
  });

  async function toggleMute(source) {
    const publication = call && call.room.localParticipant.getTrackPublication(source);
    if (!publication) return;
    await (publication.isMuted ? publication.unmute() : publication.mute());
    refresh();
  }

  $("mic-button").addEventListener("click", () => toggleMute(Track.Source.Microphone));
  $("camera-button").addEventListener("click", () => toggleMute(Track.Source.Camera));
  $("screen-button").addEventListener("click", async () => {
    if (!call) return;
    const local = call.room.localParticipant;
    try {
      await local.setScreenShareEnabled(!local.getTrackPublication(Track.Source.ScreenShare));
    } catch (error) {
      notice(error.name === "NotAllowedError" ? "Screen sharing was cancelled." : `Cannot share the screen: ${error.message}`);
    }
    refresh();
  });
  $("stats-button").addEventListener("click", () => {
    const hidden = document.body.classList.toggle("hide-stats");
    $("stats-button").setAttribute("aria-pressed", String(!hidden));
  });
  $("leave-button").addEventListener("click", async () => {
    if (!call) return;
    call.leaving = true;
    await call.room.disconnect();
    showLobby("");
  });
  $("copy-link").addEventListener("click", async () => {
    try {
      await navigator.clipboard.writeText(location.href);
      notice("Link copied: open it in another tab or browser.");
    } catch {
      notice(`Open ${location.href} in another tab or browser.`);
    }
  });
  $("chat-form").addEventListener("submit", async (event) => {
    event.preventDefault();
    const text = $("chat-input").value.trim();
    if (!call || !text) return;
    $("chat-input").value = "";
    try {
      await call.chat.send(text);
    } catch (error) {
      notice(`Message not sent: ${error.message}`);
    }
  });
  document.addEventListener("click", () => {
    if (call && !call.room.canPlaybackAudio) call.room.startAudio().then(() => notice(""));
  });
  document.body.dataset.ready = "true";
}

const params = new URLSearchParams(location.search);
$("room-input").value = params.get("room") || "playground";
$("name-input").value = `Guest ${Math.floor(100 + Math.random() * 900)}`;
if (window.LivekitClient) {
  start();
} else {
  $("join-button").disabled = true;
  showLobbyError(`LiveKit's JS SDK did not load from ${SDK_HOST}: this page needs internet access for it.`);
}
