// The Pulse API reference: Swagger UI over the public host's merged document.
// Served from Pulse itself (no CDN, no inline script); the online validator
// badge is off so the page reaches no other host.
"use strict";

window.addEventListener("load", () => {
  window.ui = SwaggerUIBundle({
    url: "/openapi.json",
    dom_id: "#swagger-ui",
    deepLinking: true,
    validatorUrl: null,
    docExpansion: "list",
    defaultModelsExpandDepth: 0,
    tryItOutEnabled: false,
  });
});
