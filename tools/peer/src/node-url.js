// Stands in for Node's 'url' module, which a dependency of vtk.js's XML reader (@oozcitak/url)
// requires when it is evaluated; the viewer never parses XML, so only these two names are needed.
export function domainToASCII(domain) {
  try {
    return new URL(`http://${domain}`).hostname;
  } catch {
    return '';
  }
}
export function domainToUnicode(domain) {
  return domain;
}
