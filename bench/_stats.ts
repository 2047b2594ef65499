// Small statistics helpers shared by the benchmarks: medians of samples taken
// in alternation, so that a noisy machine disturbs both sides alike.

/** The median of `samples`. */
export function median(samples: readonly number[]): number {
  const sorted = [...samples].sort((a, b) => a - b);
  const mid = sorted.length >> 1;
  return sorted.length % 2 ? sorted[mid] : (sorted[mid - 1] + sorted[mid]) / 2;
}

/** The p-th percentile (0..100) of `samples`. */
export function percentile(samples: readonly number[], p: number): number {
  const sorted = [...samples].sort((a, b) => a - b);
  return sorted[Math.min(sorted.length - 1, Math.floor((p / 100) * sorted.length))];
}

/**
 * Runs each candidate `runs` times, in alternation (A B A B ...), after
 * `warmup` untimed rounds; returns each candidate's samples in milliseconds.
 */
export async function alternate(
  candidates: Record<string, () => Promise<unknown>>,
  opts: { runs: number; warmup?: number },
): Promise<Record<string, number[]>> {
  const names = Object.keys(candidates);
  const samples: Record<string, number[]> = Object.fromEntries(names.map((n) => [n, []]));
  for (let round = -(opts.warmup ?? 0); round < opts.runs; round++) {
    for (const name of names) {
      const started = performance.now();
      await candidates[name]();
      if (round >= 0) samples[name].push(performance.now() - started);
    }
  }
  return samples;
}

/** The machine, for the record. */
export function machine(): string {
  const cpus = navigator.hardwareConcurrency;
  const mem = (Deno.systemMemoryInfo().total / 2 ** 30).toFixed(0);
  return `${Deno.build.os}/${Deno.build.arch}, ${cpus} cores, ${mem} GiB, kernel ${Deno.osRelease()}, deno ${Deno.version.deno}`;
}

/** Formats milliseconds with three significant decimals. */
export function ms(value: number): string {
  return `${value.toFixed(3)} ms`;
}
