/** The built-in drivers: importing this module registers them with their buses. */
import './net/null/null.js';
import './net/ring/ring.js';
