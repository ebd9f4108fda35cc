// @ts-check
/** Whether this runs under Node (files are read from paths with node:fs) rather than in a browser (fetch). */
export const isNode = typeof process !== 'undefined' && !!(process.versions && process.versions.node);
