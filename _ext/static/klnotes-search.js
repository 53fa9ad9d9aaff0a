// Search result snippets are cut from the pages' HTML before MathJax runs, so they showed raw TeX
// ("\(\nabla_\theta \log\pi_\theta\)"). Turn the TeX into readable text before the snippet is cut.
(() => {
  const SYMBOLS = {alpha: "α", beta: "β", gamma: "γ", delta: "δ", Delta: "Δ", epsilon: "ε", varepsilon: "ε",
    eta: "η", theta: "θ", lambda: "λ", mu: "μ", pi: "π", rho: "ρ", sigma: "σ", tau: "τ", phi: "φ", Phi: "Φ",
    omega: "ω", nabla: "∇", partial: "∂", infty: "∞", sum: "Σ", prod: "Π", cdot: "·", times: "×", le: "≤",
    ge: "≥", leq: "≤", geq: "≥", neq: "≠", approx: "≈", to: "→", mid: "|", star: "*", sim: "~", in: "∈",
    log: "log", exp: "exp", min: "min", max: "max", KL: "KL", ldots: "…", dots: "…", cdots: "…", quad: " ",
    qquad: " ", Vert: "‖", lVert: "‖", rVert: "‖", langle: "⟨", rangle: "⟩", E: "E"};
  const texToText = (tex) => tex
    .replace(/\\(?:begin|end)\{[^{}]*\}/g, " ")
    .replace(/\\(?:d|t)?frac\s*\{([^{}]*)\}\s*\{([^{}]*)\}/g, "($1)/($2)")
    .replace(/\\(?:mathrm|text|textrm|mathbf|mathcal|mathbb|mathsf|operatorname|boldsymbol|texttt)\s*\{([^{}]*)\}/g, "$1")
    .replace(/\\([A-Za-z]+)/g, (m, word) => (word in SYMBOLS ? SYMBOLS[word] : ""))
    .replace(/\\[,;:! |]|\\\\|&/g, " ")
    .replace(/[{}]/g, "")
    .replace(/\s+/g, " ")
    .trim();
  const readable = (text) => text
    .replace(/\\\[([\s\S]*?)\\\]/g, (m, tex) => ` ${texToText(tex)} `)
    .replace(/\$\$([\s\S]*?)\$\$/g, (m, tex) => ` ${texToText(tex)} `)
    .replace(/\\\(([\s\S]*?)\\\)/g, (m, tex) => texToText(tex));
  const patch = () => {
    if (typeof Search === "undefined" || Search._klnotesReadable) return;
    const htmlToText = Search.htmlToText;
    Search.htmlToText = (htmlString, anchor) => readable(htmlToText(htmlString, anchor));
    Search._klnotesReadable = true;
  };
  // searchtools.js loads after this file and starts searching once the document is ready
  document.addEventListener("DOMContentLoaded", patch);
})();
