// Receive statistics of one remote track, from its RTCRtpReceiver: bitrate (from the byte count since the last
// sample), resolution and frame rate, the simulcast layer that resolution is, and the media path's round trip.
const { VideoQuality } = window.LivekitClient;

// The published layer whose width is nearest the decoded one (the server forwards one layer at a time).
function layerName(publication, width) {
  const layers = (publication.trackInfo && publication.trackInfo.layers) || [];
  if (!width || layers.length < 2) return layers.length === 1 ? "single" : "";
  const nearest = layers.reduce((best, layer) => (Math.abs(layer.width - width) < Math.abs(best.width - width) ? layer : best));
  return (VideoQuality[nearest.quality] || String(nearest.quality)).toLowerCase();
}

export class TrackStats {
  constructor(publication) {
    this.publication = publication;
    this.bytes = 0;
    this.at = 0;
  }

  // {kind, kbps, width, height, fps, layer, rttMs}; null before the track has a receiver.
  async sample() {
    const track = this.publication.track;
    if (!track || !track.receiver) return null;
    const report = await track.receiver.getStats();
    let inbound = null;
    let pair = null;
    let selectedPairId = null;
    report.forEach((stats) => {
      if (stats.type === "inbound-rtp") inbound = stats;
      else if (stats.type === "transport" && stats.selectedCandidatePairId) selectedPairId = stats.selectedCandidatePairId;
    });
    report.forEach((stats) => {
      if (stats.type !== "candidate-pair") return;
      if (stats.id === selectedPairId || (!selectedPairId && stats.nominated && stats.state === "succeeded")) pair = stats;
    });
    if (!inbound) return null;
    const now = inbound.timestamp;
    const kbps = this.at && now > this.at ? Math.round(((inbound.bytesReceived - this.bytes) * 8) / (now - this.at)) : 0;
    this.bytes = inbound.bytesReceived;
    this.at = now;
    return {
      kind: this.publication.kind,
      kbps,
      width: inbound.frameWidth || 0,
      height: inbound.frameHeight || 0,
      fps: inbound.framesPerSecond || 0,
      layer: this.publication.kind === "video" ? layerName(this.publication, inbound.frameWidth) : "",
      rttMs: pair && pair.currentRoundTripTime !== undefined ? Math.round(pair.currentRoundTripTime * 1000) : null,
    };
  }
}

export function formatStats(stats) {
  const parts = [`${stats.kind} ${stats.kbps} kbps`];
  if (stats.kind === "video") {
    parts.push(stats.width ? `${stats.width}×${stats.height}${stats.fps ? ` @${Math.round(stats.fps)}` : ""}` : "no frames");
    if (stats.layer) parts.push(`layer ${stats.layer}`);
  }
  parts.push(stats.rttMs === null ? "RTT –" : `RTT ${stats.rttMs} ms`);
  return parts.join(" · ");
}
