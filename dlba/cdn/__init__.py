"""CDN offload (patent 003, "speederizing"): the nodes sample what they forward, choose the objects
best served by a content delivery network, rewrite those URLs in HTML pages on the way out and
cache the rewritten pages. Pure cores (popularity, chooser, rewriter, page cache, HTTP caching
rules) with thin shells (the per-process runtime the proxy calls, the node's hub)."""
