// What this tab publishes: its camera and microphone, or for a missing (or refused) one a generated test
// pattern or tone, so a machine without devices still shows and sounds like a participant.
const { createLocalTracks, Track } = window.LivekitClient;

const PATTERN_WIDTH = 640;
const PATTERN_HEIGHT = 360;
const BARS = ["#e8e8e8", "#e8d33c", "#3cd3d3", "#3cc85a", "#c83cc8", "#d23c3c", "#3c5ad2"];

// A moving test card with the participant's name and a clock: frames keep changing, so a viewer sees it live.
function testPattern(label) {
  const canvas = document.createElement("canvas");
  canvas.width = PATTERN_WIDTH;
  canvas.height = PATTERN_HEIGHT;
  const context = canvas.getContext("2d");
  const started = performance.now();
  const draw = () => {
    const t = (performance.now() - started) / 1000;
    const bar = PATTERN_WIDTH / BARS.length;
    const band = PATTERN_HEIGHT * 0.5; // colour bars above, name and clock below (clear of the tile's caption)
    BARS.forEach((color, i) => { context.fillStyle = color; context.fillRect(i * bar, 0, bar + 1, band); });
    context.fillStyle = "#16181d";
    context.fillRect(0, band, PATTERN_WIDTH, PATTERN_HEIGHT - band);
    const x = (Math.sin(t * 1.5) * 0.45 + 0.5) * PATTERN_WIDTH;
    context.fillStyle = "#5eead4";
    context.fillRect(x - 6, band, 12, 10);
    context.fillStyle = "#ffffff";
    context.textAlign = "center";
    context.font = "600 34px system-ui, sans-serif";
    context.fillText(label, PATTERN_WIDTH / 2, band + 60);
    context.font = "20px ui-monospace, monospace";
    context.fillStyle = "#9aa3b2";
    context.fillText(`${new Date().toLocaleTimeString()} · test pattern`, PATTERN_WIDTH / 2, band + 96);
  };
  draw();
  const timer = setInterval(draw, 1000 / 30);
  const [track] = canvas.captureStream(30).getVideoTracks();
  track.addEventListener("ended", () => clearInterval(timer));
  return track;
}

// A 440 Hz beep, a quarter second in every one and a half: audible, and it lights the speaker highlight.
function tone() {
  const audio = new AudioContext();
  const oscillator = new OscillatorNode(audio, { frequency: 440 });
  const gain = new GainNode(audio, { gain: 0 });
  const destination = audio.createMediaStreamDestination();
  oscillator.connect(gain).connect(destination);
  oscillator.start();
  const beep = () => {
    const now = audio.currentTime;
    gain.gain.setValueAtTime(0.3, now);
    gain.gain.setValueAtTime(0, now + 0.25);
  };
  beep();
  const timer = setInterval(beep, 1500);
  audio.resume();
  const [track] = destination.stream.getAudioTracks();
  track.addEventListener("ended", () => { clearInterval(timer); audio.close(); });
  return track;
}

function describe(error) {
  if (error && error.name === "NotAllowedError") return "permission refused";
  if (error && (error.name === "NotFoundError" || error.name === "OverconstrainedError")) return "none found";
  return error && error.message ? error.message : String(error);
}

async function device(kind) {
  const [track] = await createLocalTracks({ audio: kind === "audio", video: kind === "video" });
  return track;
}

// [{track, source, generated, why}] for the microphone and the camera; never throws.
export async function openMedia(label) {
  try {
    const tracks = await createLocalTracks({ audio: true, video: true });
    return tracks.map((track) => ({ track, source: track.source, generated: false }));
  } catch {
    // One of the two may still be there: ask for each alone.
  }
  const opened = [];
  for (const [kind, source, generate] of [["audio", Track.Source.Microphone, tone],
                                          ["video", Track.Source.Camera, () => testPattern(label)]]) {
    try {
      opened.push({ track: await device(kind), source, generated: false });
    } catch (error) {
      opened.push({ track: generate(), source, generated: true, why: describe(error) });
    }
  }
  return opened;
}
