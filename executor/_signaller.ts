// Signals process groups where Deno.kill(-pgid) is not allowed (a scoped
// --allow-run, as under the agent's permission set): one long-lived /bin/sh
// whose builtin `kill` does the work, fed one request per line. Spawning the
// `kill` program instead costs about 1.5 ms per signal, and the spawn core
// sweeps every step's group once it exits.

const SHELL = "/bin/sh";
const LOOP = 'while read -r s g; do kill -s "$s" -- "-$g" 2>/dev/null; echo .; done';
const encoder = new TextEncoder();

class ShellSignaller {
  #child: Deno.ChildProcess | null = null;
  #writer: WritableStreamDefaultWriter<Uint8Array> | null = null;
  #reader: ReadableStreamDefaultReader<Uint8Array> | null = null;
  #queue: Promise<unknown> = Promise.resolve();
  #broken = false;

  /**
   * Sends `signal` to group `pgid`. Resolves `false` when the helper shell
   * cannot be used (not allowed, or it died), so the caller can fall back.
   */
  signal(pgid: number, signal: Deno.Signal): Promise<boolean> {
    const result = this.#queue.then(() => this.#send(pgid, signal));
    this.#queue = result.catch(() => {});
    return result;
  }

  async #send(pgid: number, signal: Deno.Signal): Promise<boolean> {
    if (this.#broken || !Number.isInteger(pgid) || pgid <= 1) return false;
    try {
      if (!this.#child) this.#start();
      await this.#writer!.write(encoder.encode(`${signal.replace(/^SIG/, "")} ${pgid}\n`));
      // One "." line per request: the signal has been sent.
      for (;;) {
        const { value, done } = await this.#reader!.read();
        if (done) throw new Error("the signalling shell exited");
        if (value.includes(0x0a)) return true;
      }
    } catch {
      this.#stop();
      return false;
    }
  }

  #start(): void {
    try {
      this.#child = new Deno.Command(SHELL, {
        args: ["-c", LOOP],
        clearEnv: true,
        env: { PATH: "/usr/bin:/bin" },
        stdin: "piped",
        stdout: "piped",
        stderr: "null",
      }).spawn();
    } catch (error) {
      // Not even /bin/sh may be spawned here: never try again.
      this.#broken = true;
      throw error;
    }
    // Never keeps the process alive, and leaves with it (its stdin closes).
    this.#child.unref();
    this.#writer = this.#child.stdin.getWriter();
    this.#reader = this.#child.stdout.getReader();
  }

  #stop(): void {
    try {
      this.#child?.kill("SIGKILL");
    } catch {
      // Already gone.
    }
    this.#child = null;
    this.#writer = null;
    this.#reader = null;
  }
}

/** The process's one signalling shell, started on first use. */
export const shellSignaller: ShellSignaller = new ShellSignaller();
