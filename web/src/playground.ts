/**
 * callplane playground: talk to a callplane agent from a browser.
 *
 * The page is served by the edge at /playground/ and gets everything it needs from its own URL:
 *   ?key=<web key>       sent to the token endpoint as `Authorization: Bearer <key>`
 *   ?link=<signed link>  passed on to the token endpoint as `?link=` (a shareable invitation)
 *   ?room=<name>         the LiveKit room (default: a fresh random `web-…` room)
 *   ?profile=<name>      the agent profile to dispatch (optional; the edge picks its default)
 *
 * Talk asks the edge for a LiveKit token (`POST /token`), joins the room, publishes the microphone
 * and plays the agent. The agent's state comes from its `lk.agent.state` attribute and both sides'
 * transcript from `lk.transcription` text streams, which is the contract callplane's agent job
 * shares with LiveKit's own agents, so the page also works with any LiveKit-compatible agent.
 *
 * `window.callplane` mirrors what the page shows, so that headless tests can wait on it without
 * scraping the DOM (tests/browser.py).
 */

import {
  ConnectionState,
  DisconnectReason,
  type Participant,
  ParticipantKind,
  type RemoteParticipant,
  type RemoteTrack,
  Room,
  RoomEvent,
  Track,
  type TextStreamReader,
} from "livekit-client";

/** Mirrors callplane/livekit_settings.py AGENT_IDENTITY_PREFIX (shared contract). */
const AGENT_IDENTITY_PREFIX = "agent-";
const AGENT_STATE_ATTRIBUTE = "lk.agent.state";
const TRANSCRIPTION_TOPIC = "lk.transcription";
const SEGMENT_ID_ATTRIBUTE = "lk.segment_id";
const FINAL_ATTRIBUTE = "lk.transcription_final";
const SPEAKER_ATTRIBUTE = "callplane.speaker";
/** How often the level meters are sampled; 20 Hz is smooth enough for a bar and cheap. */
const METER_INTERVAL_MS = 50;

type ConnectionStatus =
  | "idle"
  | "requesting-token"
  | "connecting"
  | "connected"
  | "reconnecting"
  | "disconnected"
  | "failed";

type Speaker = "agent" | "user";

type ErrorKind =
  | "unauthorized"
  | "forbidden"
  | "rate-limited"
  | "network"
  | "token"
  | "connect"
  | "microphone"
  | "disconnected";

interface PageError {
  kind: ErrorKind;
  /** HTTP status of the token endpoint's answer, when there was one. */
  status: number | null;
  message: string;
}

interface TranscriptLine {
  id: string;
  speaker: Speaker;
  identity: string;
  text: string;
  final: boolean;
}

/** The test hook: a live view of the page's state (plain data, safe to JSON-serialise). */
interface CallplaneHook {
  state: ConnectionStatus;
  connected: boolean;
  room: string;
  identity: string | null;
  profile: string | null;
  micPublished: boolean;
  micLevel: number;
  micLevelMax: number;
  agentIdentity: string | null;
  agentState: string | null;
  agentAudio: boolean;
  agentAudioLevel: number;
  agentAudioLevelMax: number;
  transcript: TranscriptLine[];
  errors: PageError[];
}

interface TokenResponse {
  token: string;
  url: string;
  room: string;
  identity: string;
  expires_at: string | number;
}

interface Access {
  key: string | null;
  link: string | null;
  room: string;
  /** Whether the room came from the URL (a signed link is valid for one named room only). */
  roomGiven: boolean;
  profile: string | null;
}

class PlaygroundError extends Error {
  constructor(
    readonly kind: ErrorKind,
    message: string,
    readonly status: number | null = null,
  ) {
    super(message);
    this.name = "PlaygroundError";
  }
}

function randomRoomName(): string {
  const bytes = new Uint8Array(4);
  crypto.getRandomValues(bytes);
  return "web-" + Array.from(bytes, (b) => b.toString(16).padStart(2, "0")).join("");
}

function readAccess(url: URL): Access {
  const param = (name: string): string | null => {
    const value = url.searchParams.get(name)?.trim();
    return value ? value : null;
  };
  const room = param("room");
  return {
    key: param("key"),
    link: param("link"),
    room: room ?? randomRoomName(),
    roomGiven: room !== null,
    profile: param("profile"),
  };
}

function isAgent(participant: Participant): boolean {
  return (
    participant.identity.startsWith(AGENT_IDENTITY_PREFIX) ||
    participant.kind === ParticipantKind.AGENT
  );
}

function describeAgentState(state: string | null): string {
  switch (state) {
    case null:
      return "not in the room";
    case "initializing":
      return "getting ready…";
    case "listening":
      return "listening";
    case "thinking":
      return "thinking…";
    case "speaking":
      return "speaking";
    default:
      return state;
  }
}

/**
 * The label of a transcript line. User speech is usually transcribed and sent by the agent, so a
 * "user" line from an agent (or from this page) is the page's user; one sent by another human in
 * the room (a hybrid room) carries that participant's identity.
 */
function speakerLabel(speaker: Speaker, sender: string, self: string | null): string {
  if (speaker === "agent") return "Agent:";
  if (sender === self || sender.startsWith(AGENT_IDENTITY_PREFIX)) return "You:";
  return `${sender}:`;
}

/** Turns the token endpoint's refusal into a sentence a user can act on. */
async function tokenError(response: Response, access: Access): Promise<PlaygroundError> {
  let detail = "";
  try {
    const body: unknown = await response.clone().json();
    if (body && typeof body === "object") {
      const record = body as Record<string, unknown>;
      const candidate = record["detail"] ?? record["error"] ?? record["message"];
      if (typeof candidate === "string") detail = candidate;
    }
  } catch {
    detail = (await response.text().catch(() => "")).slice(0, 200);
  }
  const suffix = detail ? ` (${detail})` : "";
  switch (response.status) {
    case 401: {
      const hint =
        access.link && !access.roomGiven
          ? " A link only works for the room it was made for: open the page with both ?room= " +
            "and ?link=."
          : " Open the page with a valid ?key= or ?link=.";
      return new PlaygroundError(
        "unauthorized",
        `The access key or link was not accepted (401)${suffix}.${hint}`,
        401,
      );
    }
    case 403:
      return new PlaygroundError(
        "forbidden",
        `This key or link may not join that room (403)${suffix}.`,
        403,
      );
    case 429: {
      const retry = response.headers.get("Retry-After");
      const when = retry ? ` Try again in ${retry} s.` : " Try again in a moment.";
      return new PlaygroundError("rate-limited", `Too many requests (429)${suffix}.${when}`, 429);
    }
    default:
      return new PlaygroundError(
        "token",
        `The token endpoint answered ${response.status}${suffix}.`,
        response.status,
      );
  }
}

async function requestToken(access: Access, signal: AbortSignal): Promise<TokenResponse> {
  const endpoint = new URL("/token", location.origin);
  if (access.link) endpoint.searchParams.set("link", access.link);
  const headers: Record<string, string> = { "Content-Type": "application/json" };
  if (access.key) headers["Authorization"] = `Bearer ${access.key}`;
  const body: Record<string, unknown> = { room: access.room, agent: true };
  if (access.profile) body["profile"] = access.profile;

  let response: Response;
  try {
    response = await fetch(endpoint, {
      method: "POST",
      headers,
      body: JSON.stringify(body),
      cache: "no-store",
      credentials: "omit",
      signal,
    });
  } catch (err) {
    throw new PlaygroundError(
      "network",
      `Could not reach the token endpoint: ${String(err)}. Check your connection.`,
    );
  }
  if (!response.ok) throw await tokenError(response, access);
  const data = (await response.json().catch(() => null)) as Partial<TokenResponse> | null;
  if (!data || typeof data.token !== "string" || typeof data.url !== "string") {
    throw new PlaygroundError("token", "The token endpoint sent an unexpected answer.");
  }
  return {
    token: data.token,
    url: data.url,
    room: typeof data.room === "string" ? data.room : access.room,
    identity: typeof data.identity === "string" ? data.identity : "",
    expires_at: data.expires_at ?? "",
  };
}

/**
 * Peak level (0..1) of one audio track, read from an AnalyserNode.
 *
 * The meters measure the actual samples rather than the server's `audioLevel` updates, so the
 * bar moves with the audio the user hears and `agentAudioLevelMax` proves that audio arrived.
 */
class LevelMeter {
  private readonly source: MediaStreamAudioSourceNode;
  private readonly analyser: AnalyserNode;
  private readonly samples: Float32Array<ArrayBuffer>;

  constructor(context: AudioContext, track: MediaStreamTrack) {
    this.source = context.createMediaStreamSource(new MediaStream([track]));
    this.analyser = context.createAnalyser();
    this.analyser.fftSize = 1024;
    this.samples = new Float32Array(this.analyser.fftSize);
    this.source.connect(this.analyser);
  }

  read(): number {
    this.analyser.getFloatTimeDomainData(this.samples);
    let peak = 0;
    for (const sample of this.samples) {
      const magnitude = Math.abs(sample);
      if (magnitude > peak) peak = magnitude;
    }
    return Math.min(1, peak);
  }

  close(): void {
    this.source.disconnect();
    this.analyser.disconnect();
  }
}

function element<T extends HTMLElement>(id: string): T {
  const found = document.getElementById(id);
  if (!found) throw new Error(`playground markup is missing #${id}`);
  return found as T;
}

class Playground {
  private readonly access: Access;
  private readonly hook: CallplaneHook;
  private readonly ui = {
    talk: element<HTMLButtonElement>("talk"),
    leave: element<HTMLButtonElement>("leave"),
    startAudio: element<HTMLButtonElement>("start-audio"),
    status: element<HTMLElement>("connection-state"),
    error: element<HTMLElement>("error"),
    roomName: element<HTMLElement>("room-name"),
    identity: element<HTMLElement>("identity"),
    agentState: element<HTMLElement>("agent-state"),
    micLevel: element<HTMLMeterElement>("mic-level"),
    agentLevel: element<HTMLMeterElement>("agent-level"),
    transcript: element<HTMLOListElement>("transcript"),
    transcriptEmpty: element<HTMLElement>("transcript-empty"),
    audioSink: element<HTMLElement>("audio-sink"),
  };
  private room: Room | null = null;
  private audioContext: AudioContext | null = null;
  private micMeter: LevelMeter | null = null;
  private agentMeter: LevelMeter | null = null;
  private meterTimer: number | null = null;
  private readonly lines = new Map<string, { entry: TranscriptLine; node: HTMLLIElement }>();
  /** Bumped by every Talk and Leave: a Talk still awaiting the network when Leave (or another
   * Talk) happened sees that it is stale and stops instead of joining a room nobody wants. */
  private attempt = 0;
  private pendingToken: AbortController | null = null;

  constructor(access: Access) {
    this.access = access;
    this.hook = {
      state: "idle",
      connected: false,
      room: access.room,
      identity: null,
      profile: access.profile,
      micPublished: false,
      micLevel: 0,
      micLevelMax: 0,
      agentIdentity: null,
      agentState: null,
      agentAudio: false,
      agentAudioLevel: 0,
      agentAudioLevelMax: 0,
      transcript: [],
      errors: [],
    };
    (window as unknown as { callplane: CallplaneHook }).callplane = this.hook;
    this.ui.roomName.textContent = access.room;
    this.ui.talk.addEventListener("click", () => void this.talk());
    this.ui.leave.addEventListener("click", () => void this.leave());
    this.ui.startAudio.addEventListener("click", () => void this.startAudio());
    window.addEventListener("pagehide", () => void this.room?.disconnect());
    this.setStatus("idle");
  }

  private setStatus(state: ConnectionStatus): void {
    this.hook.state = state;
    this.hook.connected = state === "connected";
    this.ui.status.textContent = state.replace("-", " ");
    this.ui.status.dataset["state"] = state;
    const busy = state === "requesting-token" || state === "connecting";
    const inRoom = busy || state === "connected" || state === "reconnecting";
    this.ui.talk.disabled = inRoom;
    this.ui.leave.disabled = !inRoom;
    this.ui.talk.setAttribute("aria-busy", String(busy));
  }

  private showError(error: PageError): void {
    this.hook.errors.push(error);
    this.ui.error.textContent = error.message;
    this.ui.error.dataset["kind"] = error.kind;
    this.ui.error.hidden = false;
    console.warn(`callplane playground: ${error.kind}: ${error.message}`);
  }

  private clearError(): void {
    this.ui.error.hidden = true;
    this.ui.error.textContent = "";
    delete this.ui.error.dataset["kind"];
  }

  private async talk(): Promise<void> {
    if (this.room || this.pendingToken) return;
    const attempt = ++this.attempt;
    const stale = (): boolean => attempt !== this.attempt;
    this.clearError();
    // Created inside the click handler: browsers only let a user gesture start audio.
    this.audioContext ??= new AudioContext();
    void this.audioContext.resume();

    this.setStatus("requesting-token");
    let grant: TokenResponse;
    const pending = new AbortController();
    this.pendingToken = pending;
    try {
      grant = await requestToken(this.access, pending.signal);
    } catch (err) {
      if (!stale()) this.fail(err, "token");
      return;
    } finally {
      if (this.pendingToken === pending) this.pendingToken = null;
    }
    if (stale()) return;
    this.hook.room = grant.room;
    this.hook.identity = grant.identity || null;
    this.ui.roomName.textContent = grant.room;
    this.ui.identity.textContent = grant.identity ? `as ${grant.identity}` : "";

    const room = new Room({ adaptiveStream: false, dynacast: false });
    this.room = room;
    this.wire(room);
    this.setStatus("connecting");
    try {
      await room.connect(grant.url, grant.token);
    } catch (err) {
      if (stale()) return; // Leave was pressed while connecting.
      this.room = null;
      this.fail(err, "connect");
      return;
    }
    if (stale()) return;
    this.setStatus("connected");
    for (const participant of room.remoteParticipants.values()) this.noticeParticipant(participant);
    await this.startAudio();
    if (!stale()) await this.publishMicrophone(room, stale);
  }

  private async publishMicrophone(room: Room, stale: () => boolean): Promise<void> {
    try {
      const publication = await room.localParticipant.setMicrophoneEnabled(true);
      if (stale()) return;
      const track = publication?.track?.mediaStreamTrack;
      if (!track) throw new Error("no microphone track was published");
      this.hook.micPublished = true;
      if (this.audioContext) {
        this.micMeter?.close();
        this.micMeter = new LevelMeter(this.audioContext, track);
      }
      this.startMeters();
    } catch (err) {
      if (stale()) return;
      const reason = err instanceof Error ? `${err.name}: ${err.message}` : String(err);
      this.showError({
        kind: "microphone",
        status: null,
        message:
          `Could not use your microphone (${reason}). Allow microphone access for this page; ` +
          "you can still hear the agent.",
      });
    }
  }

  private fail(err: unknown, fallback: ErrorKind): void {
    if (err instanceof PlaygroundError) {
      this.showError({ kind: err.kind, status: err.status, message: err.message });
    } else {
      const message = err instanceof Error ? err.message : String(err);
      this.showError({
        kind: fallback,
        status: null,
        message:
          fallback === "connect"
            ? `Could not connect to the LiveKit room: ${message}`
            : `Something went wrong: ${message}`,
      });
    }
    this.setStatus("failed");
  }

  private async leave(): Promise<void> {
    this.attempt++;
    this.pendingToken?.abort();
    this.pendingToken = null;
    const room = this.room;
    this.room = null;
    if (room) await room.disconnect();
    this.teardown();
    this.setStatus("disconnected");
  }

  private async startAudio(): Promise<void> {
    try {
      await this.audioContext?.resume();
      await this.room?.startAudio();
    } catch (err) {
      console.warn("callplane playground: audio playback is blocked", err);
    }
    this.ui.startAudio.hidden = this.room?.canPlaybackAudio ?? true;
  }

  private wire(room: Room): void {
    room
      .on(RoomEvent.ConnectionStateChanged, (state: ConnectionState) => {
        if (this.room !== room) return;
        if (state === ConnectionState.Reconnecting || state === ConnectionState.SignalReconnecting)
          this.setStatus("reconnecting");
        else if (state === ConnectionState.Connected && this.hook.state === "reconnecting")
          this.setStatus("connected");
      })
      .on(RoomEvent.Disconnected, (reason?: DisconnectReason) => {
        // Leave has already cleaned up after its own disconnect; this is the server's doing.
        if (this.room !== room) return;
        const byUser = reason === DisconnectReason.CLIENT_INITIATED;
        this.room = null;
        this.teardown();
        this.setStatus("disconnected");
        if (!byUser) {
          const why = reason === undefined ? "unknown reason" : DisconnectReason[reason];
          this.showError({
            kind: "disconnected",
            status: null,
            message: `The call ended: ${why}. Press Talk to join again.`,
          });
        }
      })
      .on(RoomEvent.ParticipantConnected, (participant: RemoteParticipant) =>
        this.noticeParticipant(participant),
      )
      .on(RoomEvent.ParticipantDisconnected, (participant: RemoteParticipant) => {
        if (participant.identity === this.hook.agentIdentity) {
          this.hook.agentIdentity = null;
          this.setAgentState(null);
        }
      })
      .on(RoomEvent.ParticipantAttributesChanged, (_changed, participant: Participant) =>
        this.noticeParticipant(participant),
      )
      .on(
        RoomEvent.TrackSubscribed,
        (track: RemoteTrack, _publication, participant: RemoteParticipant) =>
          this.attachAudio(track, participant),
      )
      .on(RoomEvent.TrackUnsubscribed, (track: RemoteTrack, _publication, participant) => {
        for (const node of track.detach()) node.remove();
        if (isAgent(participant)) {
          this.agentMeter?.close();
          this.agentMeter = null;
          this.hook.agentAudio = false;
        }
      })
      .on(RoomEvent.AudioPlaybackStatusChanged, () => {
        this.ui.startAudio.hidden = room.canPlaybackAudio;
      })
      .on(RoomEvent.MediaDevicesError, (error: Error) => {
        this.showError({
          kind: "microphone",
          status: null,
          message: `Microphone problem: ${error.message}`,
        });
      });

    room.registerTextStreamHandler(TRANSCRIPTION_TOPIC, (reader, participantInfo) => {
      void this.readTranscription(reader, participantInfo.identity).catch((err: unknown) =>
        console.warn("callplane playground: a transcription stream failed", err),
      );
    });
  }

  private noticeParticipant(participant: Participant): void {
    if (participant === this.room?.localParticipant || !isAgent(participant)) return;
    this.hook.agentIdentity = participant.identity;
    this.setAgentState(participant.attributes[AGENT_STATE_ATTRIBUTE] ?? "initializing");
  }

  private setAgentState(state: string | null): void {
    this.hook.agentState = state;
    this.ui.agentState.textContent = describeAgentState(state);
    this.ui.agentState.dataset["state"] = state ?? "absent";
  }

  private attachAudio(track: RemoteTrack, participant: RemoteParticipant): void {
    if (track.kind !== Track.Kind.Audio) return;
    // Every remote voice is played (a hybrid room also has phone callers); only the agent's is
    // metered. Chrome only feeds a remote WebRTC track into Web Audio while it is also playing
    // in a media element, so attaching comes first.
    const audio = track.attach();
    audio.dataset["participant"] = participant.identity;
    this.ui.audioSink.append(audio);
    if (isAgent(participant)) {
      this.hook.agentAudio = true;
      if (this.audioContext) {
        this.agentMeter?.close();
        this.agentMeter = new LevelMeter(this.audioContext, track.mediaStreamTrack);
      }
      this.noticeParticipant(participant);
      this.startMeters();
    }
  }

  private startMeters(): void {
    if (this.meterTimer !== null) return;
    this.meterTimer = window.setInterval(() => {
      const mic = this.micMeter?.read() ?? 0;
      const agent = this.agentMeter?.read() ?? 0;
      this.hook.micLevel = mic;
      this.hook.micLevelMax = Math.max(this.hook.micLevelMax, mic);
      this.hook.agentAudioLevel = agent;
      this.hook.agentAudioLevelMax = Math.max(this.hook.agentAudioLevelMax, agent);
      // A square root spreads speech levels (mostly 0.01..0.3) over the bar.
      this.ui.micLevel.value = Math.sqrt(mic);
      this.ui.agentLevel.value = Math.sqrt(agent);
    }, METER_INTERVAL_MS);
  }

  private teardown(): void {
    if (this.meterTimer !== null) window.clearInterval(this.meterTimer);
    this.meterTimer = null;
    this.micMeter?.close();
    this.agentMeter?.close();
    this.micMeter = null;
    this.agentMeter = null;
    this.ui.audioSink.replaceChildren();
    this.ui.micLevel.value = 0;
    this.ui.agentLevel.value = 0;
    this.ui.startAudio.hidden = true;
    this.hook.micPublished = false;
    this.hook.micLevel = 0;
    this.hook.agentAudio = false;
    this.hook.agentAudioLevel = 0;
    this.hook.agentIdentity = null;
    this.setAgentState(null);
  }

  /**
   * One `lk.transcription` stream is one segment's text so far: a sender either streams deltas
   * into one stream (agent speech) or sends a new stream with the whole text for each interim
   * result (user speech). Both are handled by giving the segment the text of its latest stream;
   * the final flag may arrive in the stream's trailer, so it is read again at the end.
   */
  private async readTranscription(reader: TextStreamReader, identity: string): Promise<void> {
    const attributes = (): Record<string, string> => reader.info.attributes ?? {};
    const segmentId = attributes()[SEGMENT_ID_ATTRIBUTE] || reader.info.id;
    const declared = attributes()[SPEAKER_ATTRIBUTE];
    const participant = this.room?.remoteParticipants.get(identity);
    const speaker: Speaker =
      declared === "agent" || declared === "user"
        ? declared
        : identity.startsWith(AGENT_IDENTITY_PREFIX) || (participant && isAgent(participant))
          ? "agent"
          : "user";
    let text = "";
    this.upsertLine(segmentId, speaker, identity, null, attributes()[FINAL_ATTRIBUTE] === "true");
    for await (const delta of reader) {
      text += delta;
      this.upsertLine(segmentId, speaker, identity, text, attributes()[FINAL_ATTRIBUTE] === "true");
    }
    // An empty closing stream only marks the segment final; it must not blank the line.
    this.upsertLine(
      segmentId,
      speaker,
      identity,
      text || null,
      attributes()[FINAL_ATTRIBUTE] === "true",
    );
  }

  private upsertLine(
    id: string,
    speaker: Speaker,
    identity: string,
    text: string | null,
    final: boolean,
  ): void {
    let line = this.lines.get(id);
    if (!line) {
      const entry: TranscriptLine = { id, speaker, identity, text: "", final: false };
      const node = document.createElement("li");
      node.dataset["testid"] = "transcript-line";
      node.dataset["segmentId"] = id;
      node.dataset["speaker"] = speaker;
      const who = document.createElement("span");
      who.className = "speaker";
      who.textContent = speakerLabel(speaker, identity, this.hook.identity);
      const body = document.createElement("span");
      body.className = "text";
      // A real space, not just a margin, so copied text and screen readers keep the words apart.
      node.append(who, " ", body);
      this.ui.transcript.append(node);
      this.ui.transcriptEmpty.hidden = true;
      line = { entry, node };
      this.lines.set(id, line);
      this.hook.transcript.push(entry);
    }
    if (text !== null) line.entry.text = text;
    // Final is sticky: a late interim stream never reopens a finished segment.
    line.entry.final = line.entry.final || final;
    line.node.dataset["final"] = String(line.entry.final);
    line.node.setAttribute("aria-busy", String(!line.entry.final));
    const body = line.node.querySelector(".text");
    if (body) body.textContent = line.entry.text;
  }
}

function main(): void {
  const access = readAccess(new URL(location.href));
  new Playground(access);
}

if (document.readyState === "loading") {
  document.addEventListener("DOMContentLoaded", main, { once: true });
} else {
  main();
}
