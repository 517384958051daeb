// Hover previews (sphinx-tippy, see book/_ext/hover_previews.py): typeset a tip's maths once
// tippy.js has put the tip into the page. Typeset earlier (sphinx-tippy's own MathJax option does
// it before the tip is mounted), MathJax cannot measure the text around the formula and sets it
// at about 70% of the size the page uses. Each tip is typeset once, then placed again for its
// new size. Runs before sphinx-tippy's page script creates the tips (on window load).
document.addEventListener("DOMContentLoaded", () => {
  if (!window.tippy) return;
  tippy.setDefaultProps({
    theme: "book",
    // a citation link's title attribute holds the same entry; the browser would show it twice
    onCreate(instance) {
      instance.reference.removeAttribute("title");
    },
    onMount(instance) {
      const box = instance.popper;
      if (box.dataset.typeset || !(window.MathJax && MathJax.typesetPromise)) return;
      box.dataset.typeset = "1";
      MathJax.typesetPromise([box]).then(() => {
        if (instance.popperInstance) instance.popperInstance.update();
      });
    },
  });
});
