// klnotes book: search results list the chapters first, then the other pages, then the API
// reference (a search for "k3" used to show 17 API entries before the first chapter).
// Sphinx inlines this file as its Scorer (html_search_scorer in _config.yml); the weights
// below are Sphinx's defaults.
var Scorer = {
  score: (result) => {
    const [docname, , , , score] = result;
    if (/^book\/\d\d_/.test(docname)) return score + 100;  // a chapter
    if (docname.startsWith("book/api/")) return score;     // the API reference
    return score + 50;                                      // intro, course guide, citation page
  },
  objNameMatch: 11,
  objPartialMatch: 6,
  objPrio: {0: 15, 1: 5, 2: -5},
  objPrioDefault: 0,
  title: 15,
  partialTitle: 7,
  term: 5,
  partialTerm: 2,
};
