/**
 * Undo what a test made in the kernel (veths, namespaces) even when tap gives up on the file: a file
 * past its timeout is ended without its teardowns, but the process still exits normally, so an
 * 'exit' handler runs. undo must be synchronous (execFileSync), and it runs once.
 */

/** Run undo once: in t's teardown, or at process exit if that comes first. */
export function undoAlways(t: { teardown(fn: () => void): void }, undo: () => void): void {
  let done = false;
  const once = (): void => {
    if (done) return;
    done = true;
    process.off('exit', once);
    undo();
  };
  process.once('exit', once);
  t.teardown(once);
}
