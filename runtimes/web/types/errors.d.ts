/** The one error type this package throws: one sentence saying what was wrong and what was expected. */
export class EdgernnError extends Error {
    /** @param {string} message */
    constructor(message: string);
}
