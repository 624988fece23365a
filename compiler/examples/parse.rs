fn main() {
    let path = std::env::args().nth(1).unwrap();
    let text = std::fs::read_to_string(&path).unwrap();
    let mut d = Vec::new();
    let f = meshc::syntax::parse(meshc::source::FileId(0), &text, &mut d);
    println!("{:#?}", f.map(|f| f.items.len()));
    for x in &d { println!("{:?}", x); }
}
