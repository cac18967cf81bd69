/**
 * Positional arguments before "--" for apps whose contract has them (`tspmd emu dmatest ...`,
 * `tspmd vfio-user-info SOCKET`): runApp moves an app's own flags after "--" (App.ownFlags), so the
 * positionals are declared as own flags, found by skipping the EAL options and their values.
 */
import { EAL_VALUE_OPTIONS } from '../../src/options.js';

/**
 * Own flags for runApp: the app's named flags plus every positional found before "--" in argv
 * (argv without the app name), each as a flag without value.
 */
export function ownFlagsWithPositionals(argv: readonly string[], named: Record<string, boolean>): Record<string, boolean> {
  const own: Record<string, boolean> = { ...named };
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i];
    if (a === '--') break;
    const name = a.split('=')[0];
    if (name in named) { if (named[name] && !a.includes('=')) i++; continue; }
    if (a.startsWith('-')) { if (EAL_VALUE_OPTIONS.has(name) && !a.includes('=')) i++; continue; }
    own[a.split('=')[0]] = false; // moveOwnFlags looks flags up by the text before '='
  }
  return own;
}

/** The arguments of this process after the app name (process.argv: node, script, app, ...). */
export function appArgv(): string[] {
  return process.argv.slice(3);
}
