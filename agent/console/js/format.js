// ferry console — how values are shown: sizes, rates, durations, and times
// in the operator's zone (the browser's by default; the choice is kept in
// localStorage under "ferry.tz").

const TZ_KEY = "ferry.tz";

/** The zone times are shown in. */
export function zone() {
  const saved = localStorage.getItem(TZ_KEY);
  if (saved && validZone(saved)) return saved;
  return Intl.DateTimeFormat().resolvedOptions().timeZone || "UTC";
}

export function setZone(name) {
  if (validZone(name)) localStorage.setItem(TZ_KEY, name);
}

function validZone(name) {
  try {
    new Intl.DateTimeFormat("en", { timeZone: name });
    return true;
  } catch {
    return false;
  }
}

/** Every IANA zone the browser knows (the current one first if missing). */
export function zones() {
  const list = typeof Intl.supportedValuesOf === "function" ? Intl.supportedValuesOf("timeZone") : ["UTC"];
  const all = new Set(list);
  all.add("UTC");
  all.add(zone());
  return Array.from(all).sort();
}

/** ms since the epoch as "YYYY-MM-DD HH:MM:SS ZONE" in the operator's zone. */
export function time(ms) {
  if (ms === null || ms === undefined) return "—";
  const fmt = new Intl.DateTimeFormat("en-CA", {
    timeZone: zone(),
    year: "numeric",
    month: "2-digit",
    day: "2-digit",
    hour: "2-digit",
    minute: "2-digit",
    second: "2-digit",
    hourCycle: "h23",
    timeZoneName: "short",
  });
  const parts = Object.fromEntries(fmt.formatToParts(new Date(ms)).map((p) => [p.type, p.value]));
  return `${parts.year}-${parts.month}-${parts.day} ${parts.hour}:${parts.minute}:${parts.second} ${parts.timeZoneName}`;
}

/** Short clock time for chart axes. */
export function clock(ms) {
  return new Intl.DateTimeFormat("en-GB", { timeZone: zone(), hour: "2-digit", minute: "2-digit", hourCycle: "h23" }).format(
    new Date(ms),
  );
}

const UNITS = ["B", "KiB", "MiB", "GiB", "TiB", "PiB"];

export function bytes(n) {
  if (n === null || n === undefined) return "—";
  let value = Number(n);
  let unit = 0;
  while (value >= 1024 && unit < UNITS.length - 1) {
    value /= 1024;
    unit += 1;
  }
  return unit === 0 ? `${value} B` : `${value.toFixed(1)} ${UNITS[unit]}`;
}

export function rate(n) {
  if (n === null || n === undefined) return "—";
  return `${bytes(n)}/s`;
}

/** Seconds as "1h 02m", "3m 05s", "12.3 s". */
export function seconds(s) {
  if (s === null || s === undefined) return "—";
  const v = Number(s);
  if (v < 60) return `${v.toFixed(1)} s`;
  const m = Math.floor(v / 60);
  if (m < 60) return `${m}m ${String(Math.floor(v % 60)).padStart(2, "0")}s`;
  return `${Math.floor(m / 60)}h ${String(m % 60).padStart(2, "0")}m`;
}

/** A group state or other enum as words: "start_sync_failed" -> "start sync failed". */
export function words(s) {
  return s ? String(s).replaceAll("_", " ") : "—";
}

/** A policy schedule as text, as `ferry policy list` writes it. */
export function schedule(sched) {
  if (!sched) return "—";
  const s = sched.kind ? sched : sched.schedule || {};
  switch (s.kind) {
    case "daily":
      return `daily ${s.at}`;
    case "weekly":
      return `weekly ${(s.weekdays || []).join(",")} ${s.at}`;
    case "monthly": {
      const days = (s.days || []).map(String);
      if (s.month_end) days.push("month-end");
      return `monthly ${days.join(",")} ${s.at}`;
    }
    default:
      return JSON.stringify(s);
  }
}
