// A LiveKit JS participant driven by tests/test_browser.py through page.evaluate: window.tern.
// Everything the test checks is kept in plain objects so it crosses into Python as JSON.
"use strict";

(() => {
  const { ExternalE2EEKeyProvider, Room, RoomEvent, Track, VideoQuality } = LivekitClient;
  const E2EE_WORKER = "node_modules/livekit-client/dist/livekit-client.e2ee.worker.js";

  const state = {
    errors: [],     // messages of errors and failures seen in the page
    subscribed: [], // {kind, trackSid, participant} per TrackSubscribed
    data: [],       // {text, participant, topic, kind} per DataReceived
  };
  let room = null;

  function remoteTracks() {
    const tracks = [];
    for (const participant of room.remoteParticipants.values()) {
      for (const publication of participant.trackPublications.values()) {
        if (publication.track) tracks.push({ participant: participant.identity, track: publication.track });
      }
    }
    return tracks;
  }

  // options: RoomOptions; the defaults try a single peer connection (/rtc/v1) first and fall back to
  // /rtc when /rtc/v1/validate answers 404. With e2eeKey, end-to-end encryption with that shared key (the SDK's
  // worker, served from node_modules).
  async function connect(url, token, options, e2eeKey) {
    let keyProvider = null;
    if (e2eeKey) {
      keyProvider = new ExternalE2EEKeyProvider();
      options = { ...options, e2ee: { keyProvider, worker: new Worker(E2EE_WORKER) } };
    }
    room = new Room(options);
    if (keyProvider) {
      room.on(RoomEvent.EncryptionError, (error) => state.errors.push(`encryption: ${error.message}`));
      await keyProvider.setKey(e2eeKey);
      await room.setE2EEEnabled(true);
    }
    room.on(RoomEvent.TrackSubscribed, (track, publication, participant) => {
      state.subscribed.push({ kind: track.kind, trackSid: publication.trackSid, participant: participant.identity });
      // Attached so the browser plays (and therefore decodes) what arrives, as an app would.
      const element = track.attach();
      element.muted = track.kind === Track.Kind.Audio ? false : true;
      document.body.appendChild(element);
    });
    room.on(RoomEvent.DataReceived, (payload, participant, kind, topic) => {
      state.data.push({ text: new TextDecoder().decode(payload), participant: participant ? participant.identity : null, topic, kind });
    });
    room.on(RoomEvent.MediaDevicesError, (error) => state.errors.push(`media devices: ${error.message}`));
    await room.connect(url, token);
    const local = room.localParticipant;
    return {
      serverVersion: room.serverInfo ? room.serverInfo.version : null,
      roomName: room.name,
      participantSid: local.sid,
      canPublish: local.permissions ? local.permissions.canPublish : null,
      canSubscribe: local.permissions ? local.permissions.canSubscribe : null,
      remoteIdentities: [...room.remoteParticipants.values()].map((p) => p.identity),
    };
  }

  async function publishCameraAndMicrophone() {
    await room.localParticipant.enableCameraAndMicrophone();
    return [...room.localParticipant.trackPublications.values()].map((publication) => ({
      kind: publication.kind, source: publication.source, trackSid: publication.trackSid,
    }));
  }

  // inbound-rtp of every subscribed track, from its own receiver.
  async function inboundStats() {
    const result = [];
    for (const { participant, track } of remoteTracks()) {
      if (!track.receiver) continue;
      const report = await track.receiver.getStats();
      report.forEach((stats) => {
        if (stats.type !== "inbound-rtp") return;
        result.push({
          participant,
          kind: stats.kind,
          packetsReceived: stats.packetsReceived || 0,
          framesDecoded: stats.framesDecoded || 0,
          frameWidth: stats.frameWidth || 0,
          frameHeight: stats.frameHeight || 0,
          totalSamplesReceived: stats.totalSamplesReceived || 0,
          concealedSamples: stats.concealedSamples || 0,
          totalAudioEnergy: stats.totalAudioEnergy || 0,
          freezeCount: stats.freezeCount || 0,
          totalFreezesDuration: stats.totalFreezesDuration || 0,
          codec: (report.get(stats.codecId) || {}).mimeType || "",
        });
      });
    }
    return result;
  }

  // The nominated candidate pair of the peer connection carrying the first remote track: transport protocols of
  // both ends and the server's port (e.g. {local: "tcp", remote: "tcp", remotePort: 7881} over ICE-TCP); null before
  // there is one.
  async function selectedPair() {
    for (const { track } of remoteTracks()) {
      if (!track.receiver) continue;
      const report = await track.receiver.getStats();
      const byId = new Map();
      report.forEach((stats) => byId.set(stats.id, stats));
      for (const stats of byId.values()) {
        if (stats.type !== "candidate-pair" || !stats.nominated || stats.state !== "succeeded") continue;
        const local = byId.get(stats.localCandidateId), remote = byId.get(stats.remoteCandidateId);
        return { local: local.protocol, remote: remote.protocol, remotePort: remote.port };
      }
    }
    return null;
  }

  // Chromium's send-side estimate for its published video (availableOutgoingBitrate of the nominated candidate
  // pair, from the video sender's stats), in bits per second; 0 when it has none yet.
  async function publisherEstimate() {
    let estimate = 0;
    for (const publication of room.localParticipant.trackPublications.values()) {
      const sender = publication.track && publication.track.sender;
      if (publication.kind !== Track.Kind.Video || !sender) continue;
      (await sender.getStats()).forEach((stats) => {
        if (stats.type === "candidate-pair" && stats.nominated && stats.availableOutgoingBitrate) {
          estimate = Math.max(estimate, stats.availableOutgoingBitrate);
        }
      });
    }
    return estimate;
  }

  // The layers the local camera sends now, one per simulcast rid: frame width, frames per second and why the
  // encoder limits quality ("none", "cpu", "bandwidth").
  async function outboundLayers() {
    const layers = [];
    for (const publication of room.localParticipant.trackPublications.values()) {
      const sender = publication.track && publication.track.sender;
      if (publication.kind !== Track.Kind.Video || !sender) continue;
      (await sender.getStats()).forEach((stats) => {
        if (stats.type !== "outbound-rtp") return;
        layers.push({
          rid: stats.rid || "", frameWidth: stats.frameWidth || 0, framesPerSecond: stats.framesPerSecond || 0,
          active: stats.active !== false, qualityLimitationReason: stats.qualityLimitationReason || "",
        });
      });
    }
    return layers;
  }

  // The camera alone, with VideoCaptureOptions and TrackPublishOptions (e.g. {videoCodec: "vp9", scalabilityMode:
  // "L3T3_KEY"}).
  async function publishCamera(captureOptions, publishOptions) {
    await room.localParticipant.setCameraEnabled(true, captureOptions, publishOptions);
    return [...room.localParticipant.trackPublications.values()].map((publication) => ({
      kind: publication.kind, source: publication.source, trackSid: publication.trackSid,
    }));
  }

  // tests/media.py's test card (four coloured quadrants, `width` x `height`) drawn on a canvas with a small square
  // moving along its top edge (so encoders keep sending frames), published as the camera with TrackPublishOptions.
  async function publishCard(width, height, publishOptions) {
    const canvas = document.createElement("canvas");
    canvas.width = width;
    canvas.height = height;
    const context = canvas.getContext("2d");
    const colours = [[220, 30, 30], [30, 200, 30], [30, 30, 220], [230, 230, 230]];
    let tick = 0;
    const draw = () => {
      colours.forEach(([r, g, b], index) => {
        context.fillStyle = `rgb(${r}, ${g}, ${b})`;
        context.fillRect((index % 2) * width / 2, Math.floor(index / 2) * height / 2, width / 2, height / 2);
      });
      context.fillStyle = "black";
      context.fillRect((tick++ * 8) % width, 0, 8, 8);
    };
    draw();
    setInterval(draw, 33);
    await room.localParticipant.publishTrack(canvas.captureStream(30).getVideoTracks()[0],
      { source: Track.Source.Camera, ...publishOptions });
  }

  // The MIME types of the video codecs Chromium sends, from its outbound-rtp stats (one per active encoding).
  async function outboundVideoCodecs() {
    const codecs = [];
    for (const publication of room.localParticipant.trackPublications.values()) {
      const track = publication.track;
      if (!track || track.kind !== Track.Kind.Video) continue;
      const senders = [track.sender, ...[...(track.simulcastCodecs || new Map()).values()].map((c) => c.sender)];
      for (const sender of senders.filter(Boolean)) {
        const report = await sender.getStats();
        report.forEach((stats) => {
          if (stats.type === "outbound-rtp" && stats.codecId && stats.bytesSent > 0) {
            codecs.push(report.get(stats.codecId).mimeType);
          }
        });
      }
    }
    return codecs;
  }

  // A sine tone of `frequency` Hz from Web Audio, published as the microphone with TrackPublishOptions (the JS SDK
  // leaves RED on unless {red: false}).
  async function publishTone(frequency, publishOptions) {
    const context = new AudioContext();
    const oscillator = context.createOscillator();
    oscillator.frequency.value = frequency;
    const destination = context.createMediaStreamDestination();
    oscillator.connect(destination);
    oscillator.start();
    await room.localParticipant.publishTrack(destination.stream.getAudioTracks()[0],
      { source: Track.Source.Microphone, ...publishOptions });
  }

  // The MIME types of the codecs Chromium sends ("outbound") or receives ("inbound") audio in, from the stats.
  async function audioCodecs(direction) {
    const tracks = direction === "outbound"
      ? [...room.localParticipant.trackPublications.values()].map((publication) => publication.track)
      : remoteTracks().map(({ track }) => track);
    const codecs = [];
    for (const track of tracks) {
      const rtp = track && (direction === "outbound" ? track.sender : track.receiver);
      if (!rtp || track.kind !== Track.Kind.Audio) continue;
      const report = await rtp.getStats();
      report.forEach((stats) => {
        if (stats.type === `${direction}-rtp` && stats.codecId) codecs.push(report.get(stats.codecId).mimeType);
      });
    }
    return codecs;
  }

  // Whether each remote track is encrypted, as its TrackInfo says ({kind, encrypted}).
  function remoteEncryption() {
    const result = [];
    for (const participant of room.remoteParticipants.values()) {
      for (const publication of participant.trackPublications.values()) {
        result.push({ kind: publication.kind, encrypted: publication.isEncrypted });
      }
    }
    return result;
  }

  // Asks for a quality ("LOW", "MEDIUM", "HIGH") of every subscribed remote video (UpdateTrackSettings.quality).
  function setVideoQuality(quality) {
    for (const participant of room.remoteParticipants.values()) {
      for (const publication of participant.trackPublications.values()) {
        if (publication.kind === Track.Kind.Video) publication.setVideoQuality(VideoQuality[quality]);
      }
    }
  }

  async function publishData(text, topic) {
    await room.localParticipant.publishData(new TextEncoder().encode(text), { reliable: true, topic });
  }

  // Enables or disables every subscribed remote video (UpdateTrackSettings.disabled), as adaptive stream does for
  // hidden elements.
  function setVideoEnabled(enabled) {
    for (const participant of room.remoteParticipants.values()) {
      for (const publication of participant.trackPublications.values()) {
        if (publication.kind === Track.Kind.Video) publication.setEnabled(enabled);
      }
    }
  }

  async function disconnect() {
    if (room) await room.disconnect();
  }

  window.addEventListener("error", (event) => state.errors.push(`error: ${event.message}`));
  window.addEventListener("unhandledrejection", (event) => state.errors.push(`unhandled rejection: ${event.reason}`));
  window.tern = {
    state, connect, publishCameraAndMicrophone, inboundStats, selectedPair, publisherEstimate, publishData,
    setVideoEnabled, disconnect, publishCamera, setVideoQuality, publishTone, audioCodecs,
    remoteEncryption, publishCard, outboundVideoCodecs, outboundLayers,
  };
})();
