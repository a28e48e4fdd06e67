//! The subset's parsing, Go's escaping in each context, and the setting's reading.

use serde_json::json;

use super::*;

fn compile(source: &str) -> GoTemplate {
    GoTemplate::compile(source).unwrap()
}

fn html(source: &str, data: &Value) -> String {
    compile(source).render_html(data).unwrap()
}

fn text(source: &str, data: &Value) -> String {
    compile(source).render_text(data).unwrap()
}

fn refusal(source: &str) -> String {
    match GoTemplate::compile(source) {
        Ok(_) => panic!("{source:?} compiled"),
        Err(error) => error.to_string(),
    }
}

fn x(value: &str) -> Value {
    json!({ "X": value })
}

#[test]
fn literal_text_renders_as_written() {
    let source = "Hello, world & all.\n";
    assert_eq!(html(source, &json!({})), source);
    assert_eq!(text(source, &json!({})), source);
    assert_eq!(compile(source).paths().count(), 0);
}

#[test]
fn a_field_path_renders_its_value_with_or_without_spaces() {
    let data = json!({ "A": { "B": { "C": "deep" } }, "N": 42, "T": true, "Z": null });
    assert_eq!(
        html("{{ .A.B.C }}/{{.A.B.C}}/{{.N}}/{{ .T }}/{{.Z}}.", &data),
        "deep/deep/42/true/."
    );
    let paths: Vec<_> = compile("{{ .A.B.C }} {{.N}}")
        .paths()
        .map(str::to_owned)
        .collect();
    assert_eq!(paths, [".A.B.C", ".N"]);
}

#[test]
fn trim_markers_remove_the_adjacent_white_space() {
    let data = x("v");
    assert_eq!(text("a \n\t {{- .X -}} \r\n b", &data), "avb");
    assert_eq!(text("a  {{- .X }}  b", &data), "av  b");
    assert_eq!(text("a  {{ .X -}}  b", &data), "a  vb");
    assert_eq!(text("a {{- /* note */ -}} b", &data), "ab");
    // Without the space, `-` is no trim marker, so these are no field paths.
    assert!(refusal("{{-.X}}").contains("unsupported action {{-.X}}"));
    assert!(refusal("{{.X-}}").contains("unsupported action {{.X-}}"));
}

#[test]
fn comments_render_nothing() {
    let data = x("v");
    assert_eq!(html("a{{/* one */}}b{{/* two\nlines */}}c", &data), "abc");
    assert_eq!(html("a {{- /* trimmed */}} b", &data), "a b");
    assert!(refusal("a\n{{/* open").ends_with("unclosed comment at line 2"));
    assert!(refusal("{{/* a */ }}").contains("comment ends before the closing }}"));
}

#[test]
fn every_other_action_is_refused_with_its_text_and_line() {
    let cases = [
        "{{if .X}}",
        "{{else}}",
        "{{end}}",
        "{{range .X}}",
        "{{with .X}}",
        "{{template \"x\"}}",
        "{{block \"x\" .}}",
        "{{define \"x\"}}",
        "{{break}}",
        "{{continue}}",
        "{{.X | html}}",
        "{{printf \"%s\" .X}}",
        "{{len .X}}",
        "{{$x}}",
        "{{$x := .X}}",
        "{{.}}",
        "{{\"text\"}}",
        "{{42}}",
        "{{nil}}",
        "{{.X.Method 1}}",
        "{{(.X)}}",
    ];
    for action in cases {
        let source = format!("line 1\nline 2\n  {action}\n");
        assert_eq!(
            refusal(&source),
            format!("unsupported action {action} at line 3"),
            "{action}"
        );
    }
    assert_eq!(refusal("a\n{{ }}"), "empty action {{}} at line 2");
    assert_eq!(
        refusal("{{- range .Items -}}"),
        "unsupported action {{range .Items}} at line 1"
    );
}

#[test]
fn an_unclosed_action_is_refused() {
    assert_eq!(
        refusal("a\nb {{ .X"),
        "unclosed action: no }} after this {{ at line 2"
    );
}

#[test]
fn html_text_is_escaped_as_go_does() {
    // Expected strings follow Go's html/template escaper tables (html.go,
    // htmlReplacementTable: NUL " & ' + < >).
    assert_eq!(
        html("<p>{{ .X }}</p>", &x("<script>alert(1)</script>&\"'+\0")),
        "<p>&lt;script&gt;alert(1)&lt;/script&gt;&amp;&#34;&#39;&#43;\u{FFFD}</p>"
    );
    assert_eq!(
        text("<p>{{ .X }}</p>", &x("<b>&")),
        "<p><b>&</p>",
        "text/template escapes nothing"
    );
    // The same escaping in the content of <title> (RCDATA).
    assert_eq!(
        html("<title>{{ .X }}</title>", &x("A & B")),
        "<title>A &amp; B</title>"
    );
}

#[test]
fn quoted_attribute_values_are_escaped_as_go_does() {
    // Go's attrEscaper uses the same table as htmlEscaper.
    let value = x("a\"b'c<d>&e+f");
    let escaped = "a&#34;b&#39;c&lt;d&gt;&amp;e&#43;f";
    assert_eq!(
        html("<p title=\"{{ .X }}\">", &value),
        format!("<p title=\"{escaped}\">")
    );
    assert_eq!(
        html("<p class='x {{ .X }}'>", &value),
        format!("<p class='x {escaped}'>")
    );
}

#[test]
fn url_attributes_filter_schemes_and_normalize_as_go_does() {
    // Expected strings follow Go's url.go: urlFilter, then urlNormalizer (or urlEscaper after
    // `?` or `#`), then attrEscaper.
    assert_eq!(
        html("<a href=\"{{ .X }}\">", &x("javascript:alert(1)")),
        "<a href=\"#ZgotmplZ\">"
    );
    assert_eq!(
        html("<img src='{{ .X }}'>", &x("data:image/png;base64,AAAA")),
        "<img src='#ZgotmplZ'>"
    );
    assert_eq!(
        html("<a href=\"{{ .X }}\">", &x("MAILTO:a@example.com")),
        "<a href=\"MAILTO:a@example.com\">"
    );
    assert_eq!(
        html("<a href=\"{{ .X }}\">", &x("/a b/\"é\"/%2F/%zz?q=<1>")),
        "<a href=\"/a%20b/%22%c3%a9%22/%2F/%25zz?q=%3c1%3e\">"
    );
    // After literal text the scheme is not filtered; after `?` everything is encoded.
    assert_eq!(
        html("<a href=\"/go/{{ .X }}\">", &x("javascript:x")),
        "<a href=\"/go/javascript:x\">"
    );
    assert_eq!(
        html("<a href=\"https://x.example/?q={{ .X }}\">", &x("a&b c/d")),
        "<a href=\"https://x.example/?q=a%26b%20c%2fd\">"
    );
    // Other URL-valued names, as Go's attr.go lists or guesses them.
    for attribute in [
        "background",
        "xmlns:o",
        "data-href",
        "xlink:href",
        "data-url",
        "cite",
    ] {
        assert_eq!(
            html(
                &format!("<p {attribute}=\"{{{{ .X }}}}\">"),
                &x("vbscript:x")
            ),
            format!("<p {attribute}=\"#ZgotmplZ\">"),
            "{attribute}"
        );
    }
}

#[test]
fn a_reset_link_keeps_everything_but_its_ampersand() {
    let link = "https://cloud.example.com/session/reset?id=9qib&secret=abc_-";
    assert_eq!(
        html("<a href=\"{{ .Url }}\">Reset</a>", &json!({ "Url": link })),
        "<a href=\"https://cloud.example.com/session/reset?id=9qib&amp;secret=abc_-\">Reset</a>"
    );
}

#[test]
fn actions_where_go_escapes_otherwise_are_refused() {
    let cases = [
        (
            "<style>p { color: {{ .X }} }</style>",
            "is inside a <style> element",
        ),
        ("<p style=\"color: {{ .X }}\">", "is in a style attribute"),
        (
            "<a onclick=\"f('{{ .X }}')\">",
            "is in an event-handler attribute",
        ),
        ("<img srcset=\"{{ .X }} 2x\">", "is in a srcset attribute"),
        ("<p title={{ .X }}>", "is in an unquoted attribute value"),
        ("<a href={{ .X }}>", "is in an unquoted attribute value"),
        ("<p {{ .X }}>", "is inside a tag or an attribute name"),
        (
            "<p data-{{ .X }}=\"1\">",
            "is inside a tag or an attribute name",
        ),
    ];
    for (source, reason) in cases {
        let refused = refusal(source);
        assert!(refused.starts_with("{{.X}} "), "{refused}");
        assert!(refused.contains(reason), "{source}: {refused}");
    }
}

#[test]
fn a_script_element_is_refused() {
    assert_eq!(
        refusal("<p>hi</p>\n<script>var a = \"{{ .X }}\";</script>"),
        "a <script> element, which resetmail does not render at line 2"
    );
    assert!(refusal("<SCRIPT type=\"text/plain\">x</SCRIPT>").contains("<script>"));
}

#[test]
fn markup_go_refuses_is_refused() {
    assert!(refusal("<a href=\"x\"\">").contains("'\"' in an attribute name"));
    assert!(refusal("<p title=a=b>").contains("'=' in the unquoted attribute value"));
    assert!(refusal("<p title=\"{{ .X }}").contains("ends inside an attribute value"));
    assert!(refusal("a <!-- b").contains("ends inside an HTML comment"));
    assert!(refusal("<style>p{}").contains("ends inside a <style> element"));
    assert!(refusal("<title>x").contains("ends inside a <title>"));
    assert!(refusal("<p class").contains("ends inside a tag"));
    assert!(refusal("<p class=x").contains("ends inside an attribute value"));
}

#[test]
fn html_comments_are_dropped_with_what_they_hold() {
    let source = "<p>a<!-- note {{ .X }} -->b</p><!--[if mso]><td width=1><![endif]-->\
                  <!--[if !mso]>--><i>c</i><!--<![endif]-->";
    assert_eq!(html(source, &x("v")), "<p>ab</p><i>c</i>");
    assert_eq!(
        text(source, &x("v")),
        source.replace("{{ .X }}", "v"),
        "text keeps them"
    );
}

#[test]
fn literal_text_is_rewritten_as_go_does() {
    // A `<` that starts no tag becomes `&lt;`, a doctype stays, CSS comments become a space.
    assert_eq!(
        html("<!DOCTYPE html><p>1 < 2 <3</p>", &json!({})),
        "<!DOCTYPE html><p>1 &lt; 2 &lt;3</p>"
    );
    assert_eq!(
        html(
            "<style>a{color:red}/* c */b{background:url(http://x/y.png)}// line\ni{}</style>",
            &json!({})
        ),
        "<style>a{color:red} b{background:url(http://x/y.png)}\ni{}</style>"
    );
    assert_eq!(
        html("<style>a::after{content:\"/* no */\"}</style>", &json!({})),
        "<style>a::after{content:\"/* no */\"}</style>"
    );
}

#[test]
fn a_template_shaped_like_cloudreves_default_renders() {
    // The constructs of Cloudreve's default reset body (inventory/setting.go): unquoted and
    // quote-adjacent attributes, conditional comments, <style> blocks, an empty <title>.
    let source = "<html lang=en-US xmlns=http://www.w3.org/1999/xhtml><title></title>\
        <meta content=\"text/html; charset=UTF-8\"http-equiv=Content-Type>\
        <!--[if !mso]>--><meta content=\"IE=edge\"http-equiv=X-UA-Compatible><!--<![endif]-->\
        <style>a[href^=mailto]{color:inherit}@media (max-width:480px){.t{display:none!important}}</style>\
        <body class=t49 style=min-width:100%;Margin:0>\
        <a href=\"{{ .CommonContext.SiteUrl }}\"><img alt=\"\"class=t0 height=100 \
        src=\"{{ .CommonContext.Logo.Normal }}\"style=display:block></a>\
        <!--[if mso]><td class=t3 style=width:42px width=42><![endif]-->\
        <a href=\"{{ .Url }}\">Reset</a><span>{{ .CommonContext.SiteBasic.Name }}</span>";
    let data = reset_data(
        "A & B <C>",
        "https://cloud.example.com",
        "https://cloud.example.com/static/img/logo.svg",
        "https://cloud.example.com/session/reset?id=9qib&secret=Ab3",
        "nick",
        "user@example.com",
    );
    let template = compile(source);
    template.check(&data).unwrap();
    let expected = "<html lang=en-US xmlns=http://www.w3.org/1999/xhtml><title></title>\
        <meta content=\"text/html; charset=UTF-8\"http-equiv=Content-Type>\
        <meta content=\"IE=edge\"http-equiv=X-UA-Compatible>\
        <style>a[href^=mailto]{color:inherit}@media (max-width:480px){.t{display:none!important}}</style>\
        <body class=t49 style=min-width:100%;Margin:0>\
        <a href=\"https://cloud.example.com\"><img alt=\"\"class=t0 height=100 \
        src=\"https://cloud.example.com/static/img/logo.svg\"style=display:block></a>\
        <a href=\"https://cloud.example.com/session/reset?id=9qib&amp;secret=Ab3\">Reset</a>\
        <span>A &amp; B &lt;C&gt;</span>";
    assert_eq!(template.render_html(&data).unwrap(), expected);
}

#[test]
fn a_missing_path_is_an_error_naming_it() {
    let data = reset_data(
        "Site",
        "https://x",
        "https://x/logo.svg",
        "https://x/r",
        "n",
        "e",
    );
    let template = compile("Hi {{ .User.Nick }}, {{ .User.Phone }}");
    for error in [
        template.check(&data),
        template.render_html(&data).map(drop),
        template.render_text(&data).map(drop),
    ] {
        match error {
            Err(TemplateError::Missing { path }) => assert_eq!(path, ".User.Phone"),
            other => panic!("{other:?}"),
        }
    }
    // Cloudreve's map has no promoted fields: `.SiteBasic.Name` needs `.CommonContext.`.
    assert_eq!(
        compile("{{ .SiteBasic.Name }}")
            .check(&data)
            .map_err(|e| e.to_string()),
        Err(".SiteBasic.Name is not in the data".to_owned())
    );
    assert!(matches!(
        compile("{{ .User }}").render_html(&data),
        Err(TemplateError::NotAValue { .. })
    ));
}

#[test]
fn the_reset_data_has_cloudreves_shape() {
    let data = reset_data(
        "Site",
        "https://x",
        "https://x/logo.svg",
        "https://x/r",
        "nick",
        "n@x",
    );
    let every_path = "{{.CommonContext.SiteBasic.Name}}{{.CommonContext.SiteBasic.Title}}\
        {{.CommonContext.SiteBasic.ID}}{{.CommonContext.SiteBasic.Description}}\
        {{.CommonContext.SiteBasic.Script}}{{.CommonContext.Logo.Normal}}\
        {{.CommonContext.Logo.Light}}{{.CommonContext.SiteUrl}}{{.User.Nick}}{{.User.Email}}\
        {{.User.ID}}{{.User.Settings.Language}}{{.Url}}";
    assert_eq!(
        text(every_path, &data),
        "Sitehttps://x/logo.svghttps://xnickn@xhttps://x/r"
    );
}

#[test]
fn titles_render_as_text_or_as_cloudreve_escapes_them() {
    let data = reset_data("A & B", "https://x", "https://x/l", "https://x/r", "n", "e");
    let title = compile("[{{ .CommonContext.SiteBasic.Name }}] Reset your password");
    assert_eq!(
        title.render_text(&data).unwrap(),
        "[A & B] Reset your password"
    );
    assert_eq!(
        title.render_html(&data).unwrap(),
        "[A &amp; B] Reset your password"
    );
}

/// The setting as Cloudreve stores it: Go's JSON encoding (`<`, `>`, `&` as `\u003c`…), keys
/// in either order.
const SETTING: &str = r#"[{"body":"\u003cp\u003eHi {{ .User.Nick }} \u0026amp; welcome\u003c/p\u003e\u003ca href=\"{{ .Url }}\"\u003eReset\u003c/a\u003e","language":"en-US","title":"[{{ .CommonContext.SiteBasic.Name }}] Reset your password"},{"title":"[{{ .CommonContext.SiteBasic.Name }}] 重设密码","body":"\u003cp\u003e{{ .User.Nick }}，您好\u003c/p\u003e","language":"zh-CN"}]"#;

fn templates() -> Vec<SiteTemplate> {
    parse_reset_templates(SETTING).unwrap()
}

#[test]
fn the_setting_parses_in_go_encoding_with_keys_in_any_order() {
    let templates = templates();
    let languages: Vec<_> = templates.iter().map(|t| t.language.as_str()).collect();
    assert_eq!(languages, ["en-US", "zh-CN"]);
    let data = reset_data(
        "S",
        "https://x",
        "https://x/l",
        "https://x/r?a=1&b=2",
        "<n>",
        "e",
    );
    assert_eq!(
        templates[0].body.render_html(&data).unwrap(),
        "<p>Hi &lt;n&gt; &amp; welcome</p><a href=\"https://x/r?a=1&amp;b=2\">Reset</a>"
    );
    assert_eq!(
        templates[1].title.render_text(&data).unwrap(),
        "[S] 重设密码"
    );
}

#[test]
fn a_bad_setting_is_refused_with_the_entry_and_reason() {
    let bad_body = r#"[{"language":"en-US","title":"t","body":"b"},
        {"language":"zh-CN","title":"t","body":"\u003cp\u003e\n\n{{range .X}}x{{end}}"}]"#;
    let refused = |json: &str| match parse_reset_templates(json) {
        Ok(_) => panic!("{json} parsed"),
        Err(error) => error.to_string(),
    };
    assert_eq!(
        refused(bad_body),
        "mail_reset_template[zh-CN].body: unsupported action {{range .X}} at line 3"
    );
    assert_eq!(
        refused(r#"[{"language":"en-US","title":"{{ .X","body":"b"}]"#),
        "mail_reset_template[en-US].title: unclosed action: no }} after this {{ at line 1"
    );
    assert_eq!(refused("[]"), "mail_reset_template: an empty list");
    assert_eq!(refused("{}"), "mail_reset_template: not a JSON array");
    assert!(refused("[").starts_with("mail_reset_template: not valid JSON"));
    assert_eq!(
        refused(r#"[{"language":"en-US","title":"t"}]"#),
        "mail_reset_template: entry 0 has no string `body`"
    );
    assert_eq!(
        refused(r#"[{"language":1,"title":"t","body":"b"}]"#),
        "mail_reset_template: entry 0 has no string `language`"
    );
}

#[test]
fn the_language_is_chosen_exactly_then_by_primary_subtag_then_first() {
    let json = r#"[{"language":"en-US","title":"en","body":""},
        {"language":"zh-CN","title":"cn","body":""},
        {"language":"zh-TW","title":"tw","body":""},
        {"language":"pt-BR","title":"br","body":""}]"#;
    let templates = parse_reset_templates(json).unwrap();
    let chosen = |language| choose(&templates, language).language.as_str();
    assert_eq!(chosen(Some("zh-TW")), "zh-TW");
    assert_eq!(chosen(Some("ZH-tw")), "zh-TW");
    assert_eq!(chosen(Some("zh-HK")), "zh-CN", "the first zh-* template");
    assert_eq!(chosen(Some("zh")), "zh-CN");
    assert_eq!(chosen(Some("pt-PT")), "pt-BR");
    assert_eq!(chosen(Some("ja-JP")), "en-US", "the first template");
    assert_eq!(chosen(Some("")), "en-US");
    assert_eq!(chosen(None), "en-US");
}
